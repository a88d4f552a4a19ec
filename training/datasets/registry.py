"""Dataset names → builders, one table like open_clip's factory: `build_dataset("ade150")`."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

from lsmseg.training.datasets.ade20k import ade20k_150, ade20k_847
from lsmseg.training.datasets.base import SegmentationDataset, Transform, TransformedDataset
from lsmseg.training.datasets.coco_stuff import coco_stuff_171
from lsmseg.training.datasets.pascal_context import pascal_context_59, pascal_context_459
from lsmseg.training.datasets.synthetic import SyntheticScenes
from lsmseg.training.datasets.voc import voc20, voc20b

Root = str | os.PathLike | None

DATASETS: dict[str, Callable[[Root], SegmentationDataset]] = {
    "coco171-train": partial(coco_stuff_171, split="train"),
    "coco171-val": partial(coco_stuff_171, split="val"),
    "ade150": ade20k_150,
    "ade847": ade20k_847,
    "pc59": pascal_context_59,
    "pc459": pascal_context_459,
    "voc20": voc20,
    "voc20b": voc20b,
    # Generated, so `root` does not matter: the demo model's training set and its open-vocabulary test set.
    "synthetic-train": lambda root: SyntheticScenes("train", num_images=4000),
    "synthetic-test": lambda root: SyntheticScenes("test", num_images=500),
}


def build_dataset(
    name: str, root: Root = None, transform: Transform | None = None, seed: int = 0
) -> SegmentationDataset:
    """The dataset registered as `name` under `root` (default $LSMSEG_DATASETS or ./datasets), with
    `transform` applied to each item (item i draws from a generator seeded by (seed, i))."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    dataset = DATASETS[name](root)
    return dataset if transform is None else TransformedDataset(dataset, transform, seed)
