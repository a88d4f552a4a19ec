"""EdgeRefinement: class probabilities snapped to the image's colour edges, never mixed across them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsmseg.model import EdgeRefinement, LSMSeg, Segmenter

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def two_colour_image(height: int, width: int, split: int) -> torch.Tensor:
    """3×H×W: red left of column `split`, blue from it on."""
    image = torch.empty(3, height, width)
    image[:, :, :split] = torch.tensor(RED)[:, None, None]
    image[:, :, split:] = torch.tensor(BLUE)[:, None, None]
    return image


def two_class_probs(height: int, width: int, split: int) -> torch.Tensor:
    """2×H×W: class 0 left of `split`, class 1 right of it, a soft ramp between (as a decoder draws it)."""
    ramp = torch.sigmoid((torch.arange(width, dtype=torch.float32) - split + 0.5) / 1.5)
    class_1 = ramp.expand(height, width)
    return torch.stack([1 - class_1, class_1])


def test_a_misplaced_boundary_moves_to_the_image_edge() -> None:
    image = two_colour_image(24, 40, split=20)
    probs = two_class_probs(24, 40, split=17)  # the model put the boundary 3 px left of the edge
    assert (probs.argmax(0)[:, 17:20] == 1).all()
    refined = EdgeRefinement()(probs, image)
    expected = torch.zeros(24, 40, dtype=torch.long)
    expected[:, 20:] = 1
    assert torch.equal(refined.argmax(0), expected)


def test_probabilities_do_not_cross_an_edge() -> None:
    image = two_colour_image(16, 32, split=16)
    probs = two_class_probs(16, 32, split=16)
    probs = (probs > 0.5).float()  # exactly class 0 on red, class 1 on blue
    refined = EdgeRefinement()(probs, image)
    # RGB distance² 0.81 at sigma 0.06: a tap across the edge weighs e^-80 (the clamp), 2e-35.
    assert refined[1, :, :16].max() < 1e-6 and refined[0, :, 16:].max() < 1e-6


def test_a_region_votes_out_scattered_wrong_pixels() -> None:
    image = torch.full((3, 30, 30), 0.5)
    image += 0.02 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))  # sensor noise
    probs = torch.zeros(2, 30, 30)
    probs[0] = 0.8
    probs[1, 10:13, 14:17] = 0.9  # a 3×3 blob taken for class 1
    probs[0, 10:13, 14:17] = 0.1
    refined = EdgeRefinement()(probs, image.clamp(0, 1))
    assert (refined.argmax(0) == 0).all()


def test_each_pixel_is_a_convex_combination_of_its_taps() -> None:
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, 20, 26, generator=generator)
    probs = torch.rand(5, 20, 26, generator=generator).softmax(dim=0)
    refined = EdgeRefinement(dilations=(1, 3))(probs, image)
    assert refined.shape == probs.shape
    torch.testing.assert_close(refined.sum(dim=0), torch.ones(20, 26))  # per-pixel distributions stay ones
    assert refined.min() >= probs.min() - 1e-6 and refined.max() <= probs.max() + 1e-6
    assert not torch.allclose(refined, probs)


def test_a_uniform_image_gets_box_filtered_passes() -> None:
    probs = torch.zeros(1, 9, 9)
    probs[0, 4, 4] = 25.0
    refined = EdgeRefinement(radius=2, dilations=(1,))(probs, torch.full((3, 9, 9), 0.3))
    expected = torch.zeros(9, 9)
    expected[2:7, 2:7] = 1.0  # every tap weighs the same: a 5×5 mean
    torch.testing.assert_close(refined[0], expected)


def test_working_size_caps_the_long_side() -> None:
    refinement = EdgeRefinement(max_side=512)
    assert refinement.working_size(1024, 768) == (512, 384)
    assert refinement.working_size(300, 2000) == (77, 512)
    assert refinement.working_size(100, 50) == (100, 50)


@pytest.mark.parametrize(
    "kwargs", [{"radius": 0}, {"dilations": ()}, {"dilations": (1, 0)}, {"sigma_colour": 0}, {"max_side": 0}]
)
def test_invalid_settings_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="edge refinement needs"):
        EdgeRefinement(**kwargs)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="do not match"):
        EdgeRefinement()(torch.zeros(2, 8, 8), torch.zeros(3, 8, 9))


def test_segmenter_labels_are_the_argmax_of_the_refined_probabilities(tiny_model: LSMSeg, tiny_text) -> None:
    image = np.zeros((64, 64, 3), np.uint8)  # model size, so nothing is resized
    image[:, :32] = (200, 40, 40)
    image[:, 32:] = (30, 60, 220)
    image[20:40, 10:25] = (240, 230, 50)
    refinement = EdgeRefinement()
    result = Segmenter(tiny_model, device="cpu", edge_refinement=refinement).segment([image], tiny_text)
    result = result.results[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = tiny_model(x, tiny_text)
    refined = refinement(torch.sigmoid(logits[0]), x[0])
    expected = refined.argmax(dim=0).numpy()
    assert (result.label_map == expected).mean() > 0.999


def test_large_images_are_refined_at_the_working_size(tiny_model: LSMSeg, tiny_text) -> None:
    image = np.zeros((150, 90, 3), np.uint8)
    image[:, 45:] = 255
    segmenter = Segmenter(tiny_model, device="cpu", edge_refinement=EdgeRefinement(max_side=40))
    result = segmenter.segment([image], tiny_text).results[0]
    assert result.label_map.shape == (150, 90)
    assert result.areas.sum() == 150 * 90
    # Refinement at 40×24 then bilinear to full size: the map is what argmax of that upsampling gives.
    x = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(64, 64),
                      mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        probs = torch.sigmoid(tiny_model(x, tiny_text))
    selected = torch.from_numpy(result.selected)
    small = F.interpolate(probs[:, selected], size=(40, 24), mode="bilinear", align_corners=False)[0]
    guide = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size=(40, 24),
                          mode="bilinear", antialias=True, align_corners=False)[0]
    refined = EdgeRefinement(max_side=40)(small, guide)
    full = F.interpolate(refined[None], size=(150, 90), mode="bilinear", align_corners=False)[0]
    expected = selected[full.argmax(dim=0)].numpy()
    assert (result.label_map == expected).mean() > 0.999
