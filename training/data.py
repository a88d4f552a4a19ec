"""Training batches in a reproducible, resumable order.

The sample stream is a chain of per-epoch permutations seeded by (seed, epoch); micro-batch m takes the next
`per_process_batch × world_size` items and each process its own slice. Every item's augmentation is seeded by
its stream position, so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lsmseg.training.datasets.base import SegmentationDataset
from lsmseg.training.datasets.transforms import TrainTransform


@dataclass
class LoaderSpec:
    crop_size: int
    per_process_batch: int
    world_size: int
    accumulation: int
    seed: int
    num_workers: int
    scale_range: tuple[float, float]  # TrainTransform's scale jitter

    @classmethod
    def from_config(cls, config: Any, image_size: int, world_size: int) -> LoaderSpec:
        per_step = world_size * config.grad_accumulation
        if config.batch_size % per_step:
            raise ValueError(
                f"batch_size {config.batch_size} must be a multiple of processes × grad_accumulation "
                f"({per_step})"
            )
        low, high = config.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high), 0 < low <= high; got {config.scale_range}")
        return cls(
            crop_size=config.crop_size or image_size,
            per_process_batch=config.batch_size // per_step,
            world_size=world_size,
            accumulation=config.grad_accumulation,
            seed=config.seed,
            num_workers=config.num_workers,
            scale_range=(float(low), float(high)),
        )


class _StreamSampler(Sampler[list[tuple[int, int]]]):
    """Yields, per micro-batch, this process's (dataset index, augmentation seed) pairs, forever."""

    def __init__(self, length: int, spec: LoaderSpec, rank: int, start_micro_batch: int) -> None:
        self.length, self.spec, self.rank, self.start = length, spec, rank, start_micro_batch

    @lru_cache(maxsize=2)  # noqa: B019 - two epochs in flight at most; the sampler lives as long as training
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.spec.seed, epoch]).permutation(self.length)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        spec = self.spec
        micro = self.start
        while True:
            first = (micro * spec.world_size + self.rank) * spec.per_process_batch
            keys = []
            for position in range(first, first + spec.per_process_batch):
                epoch, offset = divmod(position, self.length)
                keys.append((int(self._permutation(epoch)[offset]), position))
            yield keys
            micro += 1


class _Augmented(Dataset):
    def __init__(self, dataset: SegmentationDataset, transform: TrainTransform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, position = key
        sample = self.transform(self.dataset[index], np.random.default_rng([self.seed, position]))
        image = torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float() / 255
        return image, torch.from_numpy(np.ascontiguousarray(sample.label)).long()


def training_batches(
    dataset: SegmentationDataset, spec: LoaderSpec, rank: int, start_iteration: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images B×3×S×S in [0, 1], labels B×S×S) micro-batches for this process."""
    sampler = _StreamSampler(len(dataset), spec, rank, start_iteration * spec.accumulation)
    loader = DataLoader(
        _Augmented(dataset, TrainTransform(spec.crop_size, spec.scale_range), spec.seed),
        batch_sampler=sampler,
        num_workers=spec.num_workers,
        persistent_workers=spec.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    yield from loader
