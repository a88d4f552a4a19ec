"""What every dataset reader returns, so training and evaluation treat all sets alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Label value for pixels that count for nothing (unlabelled, or unseen classes during training).
# Not 255: ADE20K-847 and Pascal Context-459 use 255 as a real class index.
IGNORE_INDEX = -1


@dataclass
class Sample:
    image: np.ndarray  # H×W×3 uint8 RGB
    label: np.ndarray  # H×W int32 class indices into the dataset's `classes`, IGNORE_INDEX elsewhere
    name: str  # file stem or generator id, for logs and error messages
    # H×W int32 class-agnostic segment ids (≥ 1; IGNORE_INDEX on padding), where a dataset knows them
    # (the synthetic scenes); transforms move it together with the label.
    instances: np.ndarray | None = None


class SegmentationDataset(Protocol):
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


# A transform gets the generator it must draw from, so the caller decides how augmentation is seeded
# (per stream position in training, per index in evaluation) and runs are reproducible.
Transform = Callable[[Sample, np.random.Generator], Sample]


class TransformedDataset:
    """`dataset` with `transform` applied to every item, item i seeded by (seed, i)."""

    def __init__(self, dataset: SegmentationDataset, transform: Transform, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        index = index + len(self) if index < 0 else index  # the same seed for a negative index
        return self.transform(self.dataset[index], np.random.default_rng([self.seed, index]))


class DatasetNotFoundError(FileNotFoundError):
    """A prepared dataset folder is missing; the message names the folder and the preparation step."""
