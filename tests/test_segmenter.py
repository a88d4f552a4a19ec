"""Segmenter: raw images in, label maps at each image's own size out, consistent with the network's logits."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lsmseg.model import LSMSeg, Segmenter, to_rgb_array
from lsmseg.model.device import resolve_device
from lsmseg.model.timing import StageTimer


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_label_maps_have_each_input_size_and_index_the_classes(tiny_model: LSMSeg, tiny_text) -> None:
    segmenter = Segmenter(tiny_model, device="cpu")
    batch = segmenter.segment([random_image(50, 70, 0), random_image(90, 40, 1)], tiny_text)
    assert [r.label_map.shape for r in batch.results] == [(50, 70), (90, 40)]
    for result in batch.results:
        assert result.label_map.dtype == np.int32
        assert set(np.unique(result.label_map)) <= set(result.selected.tolist())
        assert len(result.selected) == tiny_model.config.cfm_k
        assert result.areas.sum() == result.label_map.size
        present = result.areas > 0
        assert np.all((result.scores[present] > 0) & (result.scores[present] < 1))
        assert np.all(result.scores[~present] == 0)
        for cls in np.flatnonzero(present):
            assert result.areas[cls] == (result.label_map == cls).sum()
    assert set(batch.timings) == {"clip", "sam", "cfm", "refine", "postprocess"}


def test_label_map_is_the_argmax_of_the_model_logits(tiny_model: LSMSeg, tiny_text) -> None:
    image = random_image(64, 64, 2)  # model size: no resizing, so the comparison is exact
    result = Segmenter(tiny_model, device="cpu", edge_refinement=None).segment([image], tiny_text).results[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = tiny_model(x, tiny_text)
    expected = logits[0].argmax(dim=0).numpy()
    assert (result.label_map == expected).mean() > 0.999
    winners = torch.sigmoid(logits[0].max(dim=0).values).numpy()
    for cls in np.unique(expected):
        assert result.scores[cls] == pytest.approx(winners[expected == cls].mean(), abs=1e-3)


def test_batching_matches_one_image_at_a_time(tiny_model: LSMSeg, tiny_text) -> None:
    segmenter = Segmenter(tiny_model, device="cpu")
    images = [random_image(48, 48, 3), random_image(80, 60, 4)]
    vocabularies = [tiny_text, tiny_text[[0, 5, 7]]]
    together = segmenter.segment(images, vocabularies).results
    for image, text, result in zip(images, vocabularies, together, strict=True):
        alone = segmenter.segment([image], text).results[0]
        assert (alone.label_map == result.label_map).mean() > 0.999
        np.testing.assert_allclose(alone.scores, result.scores, atol=1e-4)
    assert set(np.unique(together[1].label_map)) <= {0, 1, 2}


@pytest.mark.parametrize("protocol", ["lsmseg", "catseg"])
def test_segment_each_gives_the_fewest_pixels_first_with_the_batch_results(
    tiny_model: LSMSeg, tiny_text, protocol: str
) -> None:
    segmenter = Segmenter(tiny_model, device="cpu", protocol=protocol)
    images = [random_image(300, 280, 7), random_image(40, 30, 8), random_image(90, 100, 9)]
    together = segmenter.segment(images, tiny_text)
    each = list(segmenter.segment_each(images, tiny_text))
    assert [index for index, _, _ in each] == [1, 2, 0]
    for index, result, _ in each:
        assert result.label_map.shape == images[index].shape[:2]
        np.testing.assert_array_equal(result.label_map, together.results[index].label_map)
        np.testing.assert_allclose(result.scores, together.results[index].scores, atol=1e-6)
    postprocess = [timings["postprocess"] for _, _, timings in each]
    assert 0 < postprocess[0] < postprocess[1] < postprocess[2]  # each result's time is the batch's so far
    assert set(each[-1][2]) == set(together.timings)


def test_between_steps_runs_between_a_label_maps_steps_untimed(tiny_model: LSMSeg, tiny_text) -> None:
    segmenter = Segmenter(tiny_model, device="cpu")
    image = random_image(120, 90, 10)
    plain = segmenter.segment([image], tiny_text).results[0]
    calls: list[int] = []

    def other_work(pixels: int) -> None:
        calls.append(pixels)
        time.sleep(0.05)

    [(_, result, timings)] = segmenter.segment_each([image], tiny_text, between_steps=other_work)
    passes = len(segmenter.edge_refinement.dilations)
    assert calls == [120 * 90] * (passes - 1 + 1)  # between passes, and before the one group of 8 classes
    np.testing.assert_array_equal(result.label_map, plain.label_map)
    assert timings["postprocess"] < 0.05 * len(calls) / 2  # the other work's 0.3 s is not counted


def test_sliding_window_covers_the_image_and_uses_one_class_set(tiny_model: LSMSeg, tiny_text) -> None:
    segmenter = Segmenter(tiny_model, device="cpu", sliding_window=True)
    assert segmenter.window_stride == 40 and segmenter.sliding_size == 104  # 64 + stride, patch multiples
    assert segmenter.views() == {"global": 64, "resized": 104, "window": 64, "stride": 40, "windows": 4}
    assert Segmenter(tiny_model, device="cpu").views() == {"global": 64}
    batch = segmenter.segment([random_image(120, 90, 5)], tiny_text)
    result = batch.results[0]
    assert result.label_map.shape == (120, 90)
    assert set(np.unique(result.label_map)) <= set(result.selected.tolist())
    assert batch.timings["cfm"] > 0  # one selection from the global view, reused by the 4 windows


def test_top_k_override(tiny_model: LSMSeg, tiny_text) -> None:
    result = Segmenter(tiny_model, device="cpu").segment([random_image(64, 64, 6)], tiny_text, k=3).results[0]
    assert len(result.selected) == 3
    assert set(np.unique(result.label_map)) <= set(result.selected.tolist())


def test_empty_batch(tiny_model: LSMSeg, tiny_text) -> None:
    batch = Segmenter(tiny_model, device="cpu").segment([], tiny_text)
    assert batch.results == [] and batch.timings == {}


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (4, 3), 128), [128, 128, 128]),
        (Image.new("RGBA", (4, 3), (10, 20, 30, 0)), [10, 20, 30]),
        (Image.fromarray(np.full((3, 4), 65535, dtype=np.uint16)), [255, 255, 255]),
        (np.full((3, 4), 0.5, dtype=np.float32), [128, 128, 128]),
        (np.full((3, 4, 4), 7, dtype=np.uint8), [7, 7, 7]),
    ],
)
def test_images_are_converted_to_rgb(image, expected) -> None:
    array = to_rgb_array(image)
    assert array.shape == (3, 4, 3) and array.dtype == np.uint8
    assert array[0, 0].tolist() == expected


def test_unsupported_arrays_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected H×W"):
        to_rgb_array(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        to_rgb_array(np.zeros((2, 2), dtype=np.int64))


def test_probabilities_resize_like_the_model(tiny_model: LSMSeg) -> None:
    # Different input sizes produce the same class set for the same content, resized.
    text = tiny_model.encode_text([["a", "b"], ["c", "d"]])
    small = random_image(64, 64, 7)
    big = np.asarray(Image.fromarray(small).resize((128, 128), Image.NEAREST))
    segmenter = Segmenter(tiny_model, device="cpu")
    a, b = segmenter.segment([small, big], text).results
    upscaled = F.interpolate(torch.from_numpy(a.label_map)[None, None].float(), size=(128, 128))[0, 0]
    assert (upscaled.numpy() == b.label_map).mean() > 0.8


def test_the_default_device_is_the_gpu_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # named devices are taken as they are
    for seen, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda seen=seen: seen)
        assert resolve_device() == resolve_device("auto") == torch.device(expected)


def test_stage_timer_adds_up_repeated_stages_in_the_order_they_first_ran() -> None:
    timer = StageTimer(torch.device("cpu"))
    for name in ("refine", "clip", "refine"):
        with timer.stage(name):
            time.sleep(0.02)
    seconds = timer.seconds()
    assert list(seconds) == ["refine", "clip"]
    assert seconds["refine"] >= 0.04 and seconds["clip"] >= 0.02
