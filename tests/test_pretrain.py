"""CLIP pretraining's dense terms: segment pooling, segment-to-class matching, captions of what is visible;
its text encoding."""

import math

import torch

from lsmseg.model import get_config
from lsmseg.training.pretrain import (
    ClipPretrainConfig,
    ClipPretrainer,
    dense_caption_losses,
    match_segments,
    patch_segments,
    render_scene_bank,
    sample_crops,
    segment_log_probs,
)

NEG = float("-inf")


def test_segment_log_probs_average_the_patches_of_each_segment() -> None:
    log_p = torch.tensor([[[0.0, -1.0], [-2.0, -3.0], [-4.0, -5.0]]])  # 1 image, 3 patches, 2 classes
    means, counts = segment_log_probs(log_p, torch.tensor([[1, 1, 3]]))
    assert counts.tolist() == [[0.0, 2.0, 0.0, 1.0]]  # ids 0 and 2 cover no patch
    torch.testing.assert_close(means, torch.tensor([[[0.0, 0.0], [-1.0, -2.0], [0.0, 0.0], [-4.0, -5.0]]]))


def test_every_named_class_takes_a_segment_of_its_own_before_any_takes_two() -> None:
    # Segments 1 and 2 both look most like class 0; class 2 is named too, so it must get one of them.
    scores = torch.tensor([[[NEG, NEG, NEG], [-0.1, NEG, -2.0], [-0.2, NEG, -0.3], [-1.0, NEG, -5.0]]])
    visible = torch.tensor([[False, True, True, True]])
    named = torch.tensor([[True, False, True]])
    # Best pair first: segment 1 -> class 0; then class 2 takes its best remaining segment (2, at -0.3);
    # segment 3 is left over and takes its best named class (0). Segment 0 covers no patch.
    assert match_segments(scores, visible, named).tolist() == [[-1, 0, 2, 0]]
    # Plain argmax would have given class 0 to every segment.
    assert scores.argmax(-1)[0, 1:].tolist() == [0, 0, 0]


def test_crops_name_exactly_the_segments_that_cover_a_patch() -> None:
    bank = render_scene_bank(8, 64, num_objects=4, progress=False)
    batch = sample_crops(bank, torch.arange(12), 48, 8, torch.Generator().manual_seed(0))
    assert batch.images.shape == (12, 3, 48, 48) and batch.patch_ids.shape == (12, 36)
    torch.testing.assert_close(batch.patch_ids, patch_segments(batch.segments, 8))
    for row in range(12):
        lookup = bank.segment_classes[row]
        visible = {bank.classes[int(lookup[i - 1])] for i in batch.patch_ids[row].unique().tolist()}
        named = {bank.classes[i] for i in batch.present[row].nonzero()[:, 0].tolist()}
        assert named == visible
        assert all(name in batch.captions[row] for name in named)
    # The single-object pictures name one thing and one background.
    assert all(1 <= int(batch.present[row].sum()) <= 2 for row in range(8, 12))


def test_dense_terms_reward_patches_that_show_their_segments_class() -> None:
    # Two images of 4 patches, 3 classes (0 and 1 things, 2 a background). Image 0: an object of class 0
    # (segment 1) on background 2 (segment 2); its caption names both. Image 1: background 2 only.
    patch_ids = torch.tensor([[1, 1, 2, 2], [1, 1, 1, 1]])
    present = torch.tensor([[True, False, True], [False, False, True]])
    right = torch.tensor([[0, 0, 2, 2], [2, 2, 2, 2]])

    def terms(predicted: torch.Tensor) -> dict[str, float]:
        log_p = torch.nn.functional.one_hot(predicted, 3).float().mul(10).log_softmax(-1)
        return {k: float(v) for k, v in dense_caption_losses(log_p, patch_ids, present).items()}

    good = terms(right)
    assert all(value < 1e-3 for value in good.values()), good
    # The collapse the old patch-level terms allowed: object patches taken for the named background. Every
    # segment still shows a named class, but class 0 has no segment, and matching gives it segment 1.
    collapsed = terms(torch.tensor([[2, 2, 2, 2], [2, 2, 2, 2]]))
    assert collapsed["segment"] < 1e-3
    assert math.isclose(collapsed["presence"], 10 / 3, rel_tol=1e-3)  # class 0 is 10 nats short; 3 named
    # Patch term: segment 1's two patches (weight 1/2 each) of image 0 cost 10 nats; 3 segments weigh 1 each.
    assert math.isclose(collapsed["patch"], 10 / 3, rel_tol=1e-3)


def test_texts_encoded_up_to_the_longest_one_equal_open_clips_full_context() -> None:
    pretrainer = ClipPretrainer(get_config("demo").clip, 96, ClipPretrainConfig(steps=1))
    texts = ["red star", "a photo of a small striped blue ring on green grass.", "sky"]
    tokens = pretrainer.tokenizer(texts)
    assert int((tokens != 0).sum(dim=1).max()) < tokens.shape[1]  # so the shortcut has padding to drop
    full = torch.nn.functional.normalize(pretrainer.model.encode_text(tokens), dim=-1)
    trimmed = pretrainer.encode_texts(texts)
    assert trimmed.shape == (3, 64)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-4)
    # Gradients reach the text tower as through open_clip's own encode_text.
    trimmed.sum().backward()
    assert pretrainer.model.token_embedding.weight.grad.abs().sum() > 0
