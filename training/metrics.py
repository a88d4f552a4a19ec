"""Segmentation scores from a confusion matrix: mIoU, per-class IoU, accuracies, seen/unseen/harmonic mIoU.

Conventions (all scores are fractions in [0, 1]):
- Pixels whose label is IGNORE_INDEX (training.datasets.base), negative or ≥ num_classes are not counted.
- IoU of a class = TP / (TP + FP + FN). A class with no ground-truth pixels and no predicted pixels has IoU
  NaN and is left out of every mean (mmseg's convention). A class that is predicted but absent from the ground
  truth scores 0 and counts. detectron2's SemSegEvaluator (CAT-Seg's numbers) also leaves out classes with
  no ground truth at all: `iou(require_gt=True)` / `summary(require_gt=True)`. On full benchmark splits, where
  every class occurs, the two agree.
- Accuracy of a class = TP / its ground-truth pixels (NaN without any); mean accuracy averages the others.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

ArrayLike = np.ndarray | torch.Tensor


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def harmonic_mean(a: float, b: float) -> float:
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


class ConfusionMatrix:
    """`matrix[g, p]` = number of pixels with ground truth g predicted as p."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, label: ArrayLike) -> None:
        """Count predicted class ids (any shape: H×W, B×H×W, ...) against the label of the same shape."""
        if tuple(pred.shape) != tuple(label.shape):
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        n = self.num_classes
        on_torch = isinstance(pred, torch.Tensor) or isinstance(label, torch.Tensor)
        if on_torch:  # count where the tensors live (GPU in evaluation) and move only the n² counts
            device = pred.device if isinstance(pred, torch.Tensor) else label.device
            pred, label = (torch.as_tensor(x, device=device).long() for x in (pred, label))
        else:
            pred, label = (np.asarray(x).astype(np.int64) for x in (pred, label))
        pred, label = pred.reshape(-1), label.reshape(-1)
        keep = (label >= 0) & (label < n)  # IGNORE_INDEX is negative; ≥ n covers raw 255-style ignores
        pred, label = pred[keep], label[keep]
        if ((pred < 0) | (pred >= n)).any():
            raise ValueError(f"predicted class ids must lie in 0..{n - 1}")
        index = label * n + pred
        counts = (torch.bincount(index, minlength=n * n).cpu().numpy()
                  if on_torch else np.bincount(index, minlength=n * n))
        self.matrix += counts.reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """A new matrix counting both (e.g. the shards of a distributed evaluation)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes} classes")
        merged = ConfusionMatrix(self.num_classes, self.class_names)
        merged.matrix = self.matrix + other.matrix
        return merged

    __add__ = merge

    def all_reduce(self) -> None:
        """Sum the counts over a torch.distributed process group (no-op when not initialised)."""
        if dist.is_available() and dist.is_initialized():
            counts = torch.from_numpy(self.matrix)
            if dist.get_backend() == "nccl":
                counts = counts.cuda()
            dist.all_reduce(counts)
            self.matrix = counts.cpu().numpy()

    # Scores -------------------------------------------------------------------------------------------------
    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tp = np.diag(self.matrix).astype(np.float64)
        return tp, self.matrix.sum(axis=1).astype(np.float64), self.matrix.sum(axis=0).astype(np.float64)

    def iou(self, require_gt: bool = False) -> np.ndarray:
        """Per-class IoU, NaN where undefined (see the module docstring)."""
        tp, gt, predicted = self._counts()
        union = gt + predicted - tp
        valid = (gt > 0) if require_gt else (union > 0)
        out = np.full(self.num_classes, np.nan)
        out[valid] = tp[valid] / union[valid]
        return out

    def mean_iou(self, require_gt: bool = False) -> float:
        return _nanmean(self.iou(require_gt))

    def class_accuracy(self) -> np.ndarray:
        tp, gt, _ = self._counts()
        out = np.full(self.num_classes, np.nan)
        out[gt > 0] = tp[gt > 0] / gt[gt > 0]
        return out

    def mean_accuracy(self) -> float:
        return _nanmean(self.class_accuracy())

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def _indices(self, classes: Collection[int | str]) -> set[int]:
        indices = set()
        for item in classes:
            if isinstance(item, str):
                if self.class_names is None or item not in self.class_names:
                    raise KeyError(f"class {item!r} is not among this matrix's class names")
                indices.add(self.class_names.index(item))
            else:
                indices.add(int(item))
        return indices

    def summary(self, seen: Collection[int | str] | None = None, require_gt: bool = False) -> dict[str, Any]:
        """mIoU, pAcc, mAcc, per-class IoU; with `seen` (indices or names) also mIoU over seen / unseen and
        their harmonic mean hIoU, the usual open-vocabulary summary."""
        iou = self.iou(require_gt)
        names = self.class_names or [str(index) for index in range(self.num_classes)]
        result: dict[str, Any] = {
            "mIoU": _nanmean(iou),
            "pAcc": self.pixel_accuracy(),
            "mAcc": self.mean_accuracy(),
            "per_class_iou": dict(zip(names, iou.tolist(), strict=True)),
        }
        if seen is not None:
            is_seen = np.zeros(self.num_classes, dtype=bool)
            is_seen[list(self._indices(seen))] = True
            result["mIoU_seen"] = _nanmean(iou[is_seen])
            result["mIoU_unseen"] = _nanmean(iou[~is_seen])
            result["hIoU"] = harmonic_mean(result["mIoU_seen"], result["mIoU_unseen"])
        return result

