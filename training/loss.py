"""Per-class binary cross-entropy over the classes the CFM kept (CAT-Seg's loss, restricted to k' classes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsmseg.training.datasets.base import IGNORE_INDEX


def class_presence(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """B×C bool: which classes occur in each label map (ignored pixels excluded)."""
    flat = labels.flatten(1)
    valid = flat != IGNORE_INDEX
    presence = torch.zeros(labels.shape[0], num_classes + 1, dtype=torch.bool, device=labels.device)
    presence.scatter_(1, torch.where(valid, flat, num_classes), True)
    return presence[:, :num_classes]


def segmentation_loss(
    logits: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """logits B×K×H×W for classes `indices` (B×K, padded where `mask` is False); labels B×H×W.

    Every kept class is a binary problem per pixel: 1 where the label is that class. Ignored pixels and padded
    classes add nothing. Averaged over the counted (pixel, class) pairs.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    targets = (labels[:, None] == indices[:, :, None, None]).to(logits.dtype)
    weights = (labels[:, None] != IGNORE_INDEX) & mask[:, :, None, None]
    logits = logits.masked_fill(~mask[:, :, None, None], 0.0)  # padded classes carry -inf
    losses = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    counted = weights.sum().clamp(min=1)
    return (losses * weights).sum() / counted
