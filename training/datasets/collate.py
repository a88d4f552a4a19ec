"""Equal-size `Sample`s → one batch of tensors (a DataLoader `collate_fn`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lsmseg.training.datasets.base import Sample


@dataclass
class Batch:
    images: torch.Tensor  # B×3×H×W float32 in [0, 1]
    labels: torch.Tensor  # B×H×W int64, IGNORE_INDEX where ignored
    names: list[str]
    instances: torch.Tensor | None = None  # B×H×W int64 when every sample has an instance map

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=non_blocking)

        return Batch(move(self.images), move(self.labels), self.names, move(self.instances))

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls this on custom batch types
        def pin(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.pin_memory()

        return Batch(pin(self.images), pin(self.labels), self.names, pin(self.instances))


def collate(samples: Sequence[Sample]) -> Batch:
    sizes = {sample.label.shape for sample in samples}
    if len(sizes) != 1:
        raise ValueError(f"collate needs samples of one size, got {sorted(sizes)}; crop or resize them first")
    images = np.stack([sample.image for sample in samples]).transpose(0, 3, 1, 2)
    labels = torch.from_numpy(np.stack([sample.label for sample in samples]).astype(np.int64))
    instances = None
    if all(sample.instances is not None for sample in samples):
        instances = torch.from_numpy(np.stack([sample.instances for sample in samples]).astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255)
    return Batch(images, labels, [sample.name for sample in samples], instances)
