"""Category Filtering Module (paper eq. 2–5) on hand-made and model cost maps."""

import pytest
import torch

from lsmseg.model import cost_volume, select_categories
from lsmseg.model.cfm import filter_classes


def test_noop_when_classes_fit() -> None:
    cost = torch.randn(2, 5, 1, 3, 3)
    kept = select_categories(cost, k=5)
    assert kept.tolist() == [[0, 1, 2, 3, 4]] * 2
    assert select_categories(cost, k=32).tolist() == [[0, 1, 2, 3, 4]] * 2


def test_keeps_the_classes_with_the_highest_max_cost_sorted_by_index() -> None:
    cost = torch.zeros(1, 6, 2, 4, 4)
    # One strong pixel in one prompt is enough: the score is the max over prompts and space.
    for cls, value in {0: 0.1, 1: 0.9, 2: 0.3, 3: 0.8, 4: -0.5, 5: 0.7}.items():
        cost[0, cls, cls % 2, cls % 4, 3 - cls % 4] = value
    assert select_categories(cost, k=3).tolist() == [[1, 3, 5]]
    assert select_categories(cost, k=1).tolist() == [[1]]


def test_forcing_guarantees_ground_truth_classes_and_fills_the_rest_by_score() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, -0.2, 0.6]])
    cost = scores[:, :, None, None, None].expand(1, 6, 1, 2, 2)
    force = torch.tensor([[False, False, True, False, True, False]])
    assert select_categories(cost, k=3, force=force).tolist() == [[0, 2, 4]]
    assert select_categories(cost, k=4, force=force).tolist() == [[0, 1, 2, 4]]
    # More forced classes than slots: the best-scoring forced ones win.
    assert select_categories(cost, k=1, force=force).tolist() == [[2]]


def test_invalid_k() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        select_categories(torch.zeros(1, 3, 1, 2, 2), k=0)


def test_cost_volume_is_cosine_similarity() -> None:
    dense = torch.randn(2, 8, 3, 4)
    text = torch.randn(5, 2, 8)
    cost = cost_volume(dense, text)
    assert cost.shape == (2, 5, 2, 3, 4)
    expected = torch.nn.functional.cosine_similarity(
        dense[1, :, 2, 3][None, None], text, dim=-1
    )  # 5×2
    torch.testing.assert_close(cost[1, :, :, 2, 3], expected)
    assert cost.abs().max() <= 1 + 1e-6


def test_gathered_cost_equals_gathering_the_full_cost() -> None:
    torch.manual_seed(0)
    dense = torch.randn(2, 16, 5, 5)
    text = torch.nn.functional.normalize(torch.randn(40, 3, 16), dim=-1)
    selection = filter_classes(dense, [text, text], k=7)
    recomputed = cost_volume(dense, selection.text)  # eq. 5
    full = cost_volume(dense, text)
    gathered = torch.stack([full[b, selection.indices[b]] for b in range(2)])
    torch.testing.assert_close(recomputed, gathered)
    assert selection.mask.all()
    # Each kept class beats each dropped class on its max cost.
    scores = full.flatten(2).amax(2)
    for b in range(2):
        kept = scores[b, selection.indices[b]]
        dropped = scores[b][~torch.isin(torch.arange(40), selection.indices[b])]
        assert kept.min() >= dropped.max()


def test_per_sample_vocabularies_are_padded_and_masked() -> None:
    dense = torch.randn(2, 8, 3, 3)
    big, small = torch.randn(20, 1, 8), torch.randn(3, 1, 8)
    selection = filter_classes(dense, [big, small], k=6)
    assert selection.indices.shape == (2, 6)
    assert selection.indices[1].tolist() == [0, 1, 2, -1, -1, -1]
    assert selection.mask.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    assert torch.all(selection.text[1, 3:] == 0)
    torch.testing.assert_close(selection.text[1, :3], torch.nn.functional.normalize(small, dim=-1))
