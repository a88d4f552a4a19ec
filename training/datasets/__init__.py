"""Segmentation datasets: benchmark readers (prepared detectron2 layouts), transforms and synthetic scenes."""

from lsmseg.training.datasets.base import (
    IGNORE_INDEX,
    DatasetNotFoundError,
    Sample,
    SegmentationDataset,
    Transform,
    TransformedDataset,
)
from lsmseg.training.datasets.collate import Batch, collate
from lsmseg.training.datasets.registry import DATASETS, build_dataset
from lsmseg.training.datasets.synthetic import SEEN_CLASSES, UNSEEN_CLASSES, SyntheticScenes
from lsmseg.training.datasets.transforms import ColorJitter, EvalTransform, TrainTransform

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
