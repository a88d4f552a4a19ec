"""Segmenter(protocol="catseg"): CAT-Seg's evaluation geometry, per-view classes, fp32, no edge refinement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lsmseg.model import CatSegProtocol, EdgeRefinement, LSMSeg, Segmenter, build_model, get_config

SMALL = CatSegProtocol(short_edge=160, max_size=640, canvas=160, window=96, stride=64)


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _resize(images: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def detectron2_test_resize(image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """detectron2's ResizeShortestEdge at test time, as its docs describe it: PIL bilinear."""
    height, width = image.shape[:2]
    scale = short_edge / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    size = (int(width * scale + 0.5), int(height * scale + 0.5))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def reference_probabilities(
    model: LSMSeg, image: np.ndarray, text: torch.Tensor, k: int, protocol: CatSegProtocol
) -> torch.Tensor:
    """CAT-Seg's sliding-window inference written out plainly, for all C classes: torch Unfold/Fold, each view
    through the model on its own, classes a view's top-k dropped at logit -100. C×canvas×canvas."""
    canvas, window, stride = protocol.canvas, protocol.window, protocol.stride
    unfold = torch.nn.Unfold(kernel_size=window, stride=stride)
    fold = torch.nn.Fold(output_size=(canvas, canvas), kernel_size=window, stride=stride)
    resized = detectron2_test_resize(image, protocol.short_edge, protocol.max_size)
    pixels = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)[None]  # 0–255, as CAT-Seg
    windows = unfold(_resize(pixels, canvas))[0].T.reshape(-1, 3, window, window)
    views = _resize(torch.cat([windows, _resize(pixels, window)]) / 255, model.config.image_size)
    logits = torch.full((len(views), text.shape[0], window, window), -100.0)
    with torch.no_grad():
        for index in range(len(views)):
            view = views[index : index + 1]
            features = model.clip_features(view)
            guidance = model.fuse(features, model.sam_features(view))
            selection = model.select(features.dense, text, k)
            out = model.refine(features.dense, guidance, selection, (window, window))
            logits[index, selection.indices[0]] = out[0]
    probs = logits.sigmoid()
    coverage = fold(unfold(torch.ones(1, 1, canvas, canvas)))[0]
    local = fold(probs[:-1].flatten(1).T) / coverage
    return (local + _resize(probs[-1:], canvas)[0]) / 2


@pytest.fixture(scope="module")
def small_clip_model() -> LSMSeg:
    """The tiny preset at a CLIP side of 56: the windows (96) are resized to it, as 384 -> 336 for ViT-L."""
    torch.manual_seed(5)
    return build_model(get_config("tiny").replace(image_size=56)).eval()


def test_views_are_four_windows_at_0_and_256_and_the_global_view() -> None:
    protocol = CatSegProtocol()
    assert protocol.stride == int(384 * (1 - 0.333)) == 256
    assert list(protocol.offsets()) == [0, 256]
    assert protocol.window_corners() == [(0, 0), (0, 256), (256, 0), (256, 256)]
    image = random_image(640, 640, 0)  # already detectron2's size and the canvas: windows are plain crops
    views = protocol.views(image, 384)
    assert views.shape == (5, 3, 384, 384)
    pixels = torch.tensor(image).permute(2, 0, 1).float() / 255
    for view, (top, left) in zip(views, protocol.window_corners(), strict=False):
        assert torch.equal(view, pixels[:, top : top + 384, left : left + 384])
    torch.testing.assert_close(views[4], _resize(pixels[None], 384)[0])
    at_336 = protocol.views(image, 336)  # ViT-L/14's CLIP input: every view squashed, no antialias
    assert at_336.shape == (5, 3, 336, 336)
    torch.testing.assert_close(at_336, _resize(views, 336))
    assert not torch.allclose(at_336, F.interpolate(views, size=336, mode="bilinear", antialias=True))


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (512, 683, (640, 854)),
        (683, 512, (854, 640)),
        (480, 640, (640, 853)),
        (640, 640, (640, 640)),
        (100, 1000, (256, 2560)),  # the long side would pass 2560
        (1000, 100, (2560, 256)),
        (1280, 1920, (640, 960)),
    ],
)
def test_detectron2_resize_comes_first(height: int, width: int, expected: tuple[int, int]) -> None:
    protocol = CatSegProtocol()
    assert protocol.resized_shape(height, width) == expected
    assert detectron2_test_resize(random_image(height, width, 1), 640, 2560).shape[:2] == expected


def test_the_resize_to_640_is_pils_bilinear() -> None:
    protocol = CatSegProtocol()
    image = random_image(1280, 1920, 2)  # halved by PIL, whose bilinear filter widens when it shrinks
    pixels = torch.from_numpy(detectron2_test_resize(image, 640, 2560).copy()).permute(2, 0, 1)[None] / 255
    views = protocol.views(image, 384)
    torch.testing.assert_close(views[4:], _resize(pixels.float(), 384))
    plain = _resize(torch.tensor(image).permute(2, 0, 1)[None].float() / 255, 384)
    assert (views[4:] - plain).abs().max() > 0.05


def test_sizes_that_do_not_tile_the_canvas_are_refused() -> None:
    with pytest.raises(ValueError, match="do not tile a 600 canvas"):
        CatSegProtocol(canvas=600)
    with pytest.raises(ValueError, match="do not tile"):
        CatSegProtocol(canvas=320, window=384)


@pytest.mark.parametrize("setting", ["vit-b-style", "vit-l-style"])
def test_probabilities_equal_a_plain_unfold_fold_reference(
    setting: str, tiny_model: LSMSeg, small_clip_model: LSMSeg, tiny_text
) -> None:
    # CAT-Seg's own sizes with the tiny model (windows 384 -> CLIP 64), and smaller ones at a CLIP side of 56.
    vit_l_style = setting == "vit-l-style"
    model, protocol = (small_clip_model, SMALL) if vit_l_style else (tiny_model, CatSegProtocol())
    image = random_image(90, 130, 3)
    segmenter = Segmenter(model, device="cpu", protocol=protocol)
    probs, classes = segmenter.catseg_probabilities(image, tiny_text, k=4)
    reference = reference_probabilities(model, image, tiny_text, 4, protocol)
    assert probs.shape == (len(classes), protocol.canvas, protocol.canvas)
    torch.testing.assert_close(probs, reference[classes], atol=2e-5, rtol=0)
    dropped = torch.ones(tiny_text.shape[0], dtype=torch.bool)
    dropped[classes] = False
    assert reference[dropped].max() < 1e-30  # sigmoid(-100) in every view: never a pixel's class
    assert probs.min() >= 0.0 and probs.max() < 1.0 and (probs.flatten(1).amax(dim=1) > 0).all()


def test_each_view_keeps_its_own_classes(tiny_model: LSMSeg, tiny_text) -> None:
    protocol = CatSegProtocol()
    image = random_image(120, 90, 4)
    views = protocol.views(image, tiny_model.config.image_size)
    with torch.no_grad():
        dense = tiny_model.clip_features(views).dense
    kept = [set(tiny_model.select(dense[i : i + 1], tiny_text, 2).indices[0].tolist()) for i in range(5)]
    assert len(set(map(frozenset, kept))) > 1  # the views disagree
    only_somewhere = set.union(*kept) - set.intersection(*kept)
    assert only_somewhere  # a class kept in one view but not in another
    probs, classes = Segmenter(tiny_model, device="cpu", protocol="catseg").catseg_probabilities(
        image, tiny_text, k=2
    )
    assert set(classes.tolist()) == set.union(*kept)
    reference = reference_probabilities(tiny_model, image, tiny_text, 2, protocol)
    torch.testing.assert_close(probs, reference[classes])
    # A class the global view dropped gets only the windows' half of the average.
    dropped_by_global_view = sorted(set.union(*kept) - kept[4])
    assert dropped_by_global_view
    row = classes.tolist().index(dropped_by_global_view[0])
    assert probs[row].max() <= 0.5


def test_fp32_and_no_edge_refinement_whatever_the_segmenter_was_given(tiny_model: LSMSeg, tiny_text) -> None:
    segmenter = Segmenter(
        tiny_model, device="cpu", dtype=torch.bfloat16, edge_refinement=EdgeRefinement(), protocol="catseg"
    )
    assert segmenter.dtype == torch.float32 and segmenter.edge_refinement is None
    assert segmenter.views() == {
        "protocol": "catseg",
        "short_edge": 640,
        "max_size": 2560,
        "resized": 640,
        "window": 384,
        "stride": 256,
        "windows": 4,
        "global": 384,
        "clip_input": 64,
    }
    image = random_image(75, 110, 6)
    result = segmenter.segment([image], tiny_text).results[0]
    k = tiny_model.config.cfm_k
    reference = reference_probabilities(tiny_model, image, tiny_text, k, CatSegProtocol())
    at_image = F.interpolate(reference[None], size=(75, 110), mode="bilinear", align_corners=False)[0]
    best, expected = at_image.max(dim=0)
    assert result.label_map.shape == (75, 110)
    assert (result.label_map == expected.numpy()).mean() > 0.999
    for cls in np.unique(result.label_map):
        assert result.scores[cls] == pytest.approx(best[expected == int(cls)].mean().item(), abs=1e-4)
    assert set(np.unique(result.label_map)) <= set(result.selected.tolist())


def test_a_batch_is_segmented_image_by_image(tiny_model: LSMSeg, tiny_text) -> None:
    segmenter = Segmenter(tiny_model, device="cpu", protocol="catseg")
    images = [random_image(64, 96, 7), random_image(100, 50, 8)]
    vocabularies = [tiny_text, tiny_text[[1, 4, 9]]]
    together = segmenter.segment(images, vocabularies)
    assert set(together.timings) == {"clip", "sam", "cfm", "refine", "postprocess"}
    for image, text, result in zip(images, vocabularies, together.results, strict=True):
        alone = segmenter.segment([image], text).results[0]
        np.testing.assert_array_equal(alone.label_map, result.label_map)
    assert set(np.unique(together.results[1].label_map)) <= {0, 1, 2}


def test_unknown_protocols_are_refused(tiny_model: LSMSeg) -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        Segmenter(tiny_model, device="cpu", protocol="mask2former")
    with pytest.raises(ValueError, match="protocol='catseg'"):
        Segmenter(tiny_model, device="cpu").catseg_probabilities(random_image(8, 8, 0), torch.zeros(1, 2, 32))
