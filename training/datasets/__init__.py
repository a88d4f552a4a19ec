"""Segmentation datasets: benchmark readers (prepared detectron2 layouts), transforms and synthetic scenes."""

from training.datasets.base import (
    IGNORE_INDEX,
    DatasetNotFoundError,
    Sample,
    SegmentationDataset,
    Transform,
    TransformedDataset,
)
from training.datasets.collate import Batch, collate
from training.datasets.registry import DATASETS, build_dataset
from training.datasets.synthetic import SEEN_CLASSES, UNSEEN_CLASSES, SyntheticScenes
from training.datasets.transforms import ColorJitter, EvalTransform, TrainTransform

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "SEEN_CLASSES",
    "UNSEEN_CLASSES",
    "Batch",
    "ColorJitter",
    "DatasetNotFoundError",
    "EvalTransform",
    "Sample",
    "SegmentationDataset",
    "SyntheticScenes",
    "TrainTransform",
    "Transform",
    "TransformedDataset",
    "build_dataset",
    "collate",
]
