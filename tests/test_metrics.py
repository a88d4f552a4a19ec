"""Confusion-matrix scores against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsmseg.training.datasets.base import IGNORE_INDEX
from lsmseg.training.metrics import ConfusionMatrix, harmonic_mean

# 3 classes; the last pixel is ignored.
LABEL = np.array([0, 0, 1, 1, 2, IGNORE_INDEX])
PRED = np.array([0, 1, 1, 1, 0, 2])
# gt 0: predicted 0 once, 1 once; gt 1: predicted 1 twice; gt 2: predicted 0 once.
# IoU0 = 1 / (2 + 2 - 1) = 1/3, IoU1 = 2 / (2 + 3 - 2) = 2/3, IoU2 = 0 / (1 + 0 - 0) = 0.


def test_hand_computed_scores() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(PRED, LABEL)
    np.testing.assert_array_equal(matrix.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_allclose(matrix.iou(), [1 / 3, 2 / 3, 0])
    assert matrix.mean_iou() == pytest.approx(1 / 3)
    assert matrix.pixel_accuracy() == pytest.approx(3 / 5)
    np.testing.assert_allclose(matrix.class_accuracy(), [1 / 2, 1, 0])
    assert matrix.mean_accuracy() == pytest.approx(1 / 2)


def test_absent_class_is_nan_and_left_out() -> None:
    matrix = ConfusionMatrix(4)  # class 3 is neither labelled nor predicted
    matrix.update(PRED.reshape(2, 3), LABEL.reshape(2, 3))
    iou = matrix.iou()
    assert math.isnan(iou[3])
    assert matrix.mean_iou() == pytest.approx(1 / 3)
    assert math.isnan(matrix.class_accuracy()[3]) and matrix.mean_accuracy() == pytest.approx(1 / 2)


def test_predicted_but_unlabelled_class_counts_unless_gt_is_required() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(np.array([0, 2]), np.array([0, 0]))
    # IoU0 = 1/2; class 2: no GT, one false positive → 0 (mmseg) or left out (detectron2); class 1 absent.
    np.testing.assert_allclose(matrix.iou(), [0.5, np.nan, 0.0])
    assert matrix.mean_iou() == pytest.approx(0.25)
    assert matrix.mean_iou(require_gt=True) == pytest.approx(0.5)


def test_out_of_range_labels_are_ignored_and_bad_predictions_rejected() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(np.array([0, 1, 2]), np.array([0, 255, 3]))
    assert matrix.matrix.sum() == 1
    with pytest.raises(ValueError, match=r"0\.\.2"):
        matrix.update(np.array([3]), np.array([0]))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(np.zeros((2, 2)), np.zeros(4))


def test_tensors_count_like_arrays() -> None:
    rng = np.random.default_rng(0)
    pred, label = rng.integers(0, 5, (2, 16, 16)), rng.integers(-1, 6, (2, 16, 16))
    from_arrays, from_tensors = ConfusionMatrix(5), ConfusionMatrix(5)
    from_arrays.update(pred, label)
    from_tensors.update(torch.from_numpy(pred), torch.from_numpy(label).int())
    np.testing.assert_array_equal(from_arrays.matrix, from_tensors.matrix)


def test_merge_equals_accumulating_together() -> None:
    rng = np.random.default_rng(1)
    batches = [(rng.integers(0, 4, 50), rng.integers(-1, 4, 50)) for _ in range(4)]
    together, first, second = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    for index, (pred, label) in enumerate(batches):
        together.update(pred, label)
        (first if index % 2 else second).update(pred, label)
    np.testing.assert_array_equal(first.merge(second).matrix, together.matrix)
    np.testing.assert_array_equal((first + second).matrix, together.matrix)
    assert first.merge(second).mean_iou() == pytest.approx(together.mean_iou())
    with pytest.raises(ValueError):
        first.merge(ConfusionMatrix(5))


def test_summary_seen_unseen_harmonic() -> None:
    matrix = ConfusionMatrix(3, ["cat", "dog", "zebra"])
    matrix.update(PRED, LABEL)
    by_name = matrix.summary(seen={"cat", "dog"})
    by_index = matrix.summary(seen={0, 1})
    assert by_name["mIoU_seen"] == pytest.approx(0.5) == by_index["mIoU_seen"]
    assert by_name["mIoU_unseen"] == 0.0 and by_name["hIoU"] == 0.0
    assert by_name["mIoU"] == pytest.approx(1 / 3) and by_name["pAcc"] == pytest.approx(0.6)
    assert by_name["per_class_iou"] == pytest.approx({"cat": 1 / 3, "dog": 2 / 3, "zebra": 0.0})
    assert "hIoU" not in matrix.summary()
    with pytest.raises(KeyError):
        matrix.summary(seen={"horse"})
    assert harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3)
    assert math.isnan(harmonic_mean(0.5, float("nan")))
