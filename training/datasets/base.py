"""What every dataset reader returns, so training and evaluation treat all sets alike."""

from __future__ import annotations

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


class SegmentationDataset(Protocol):
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...
