"""Pascal VOC 2012 validation (1449 images) as VOC-20 and VOC-20b, in the detectron2 prepared layouts.

    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2012/annotations_detectron2/val/<id>.png     uint8 0..19, background/255 = ignore
    <root>/VOCdevkit/VOC2012/annotations_detectron2_bg/val/<id>.png  uint8 0..19, background 20, 255 = ignore

VOC-20b: our class list is the 20 VOC classes + "background" (label 20), matching the label maps. CAT-Seg
instead prompts the 20 VOC classes + the 39 Pascal Context-59 classes that are not VOC classes
(`VOC20B_BACKGROUND_CLASSES`) and counts any prediction ≥ 20 as background. To reproduce its protocol,
give the model `VOC20B_CATSEG_CLASSES` and pass the argmax through `collapse_background` before scoring.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from lsmseg.training.datasets.folder import LabelFolderDataset, dataset_root
from lsmseg.training.datasets.vocabularies import load_classes

VOC20_CLASSES = load_classes("voc20")
VOC20B_CLASSES = [*VOC20_CLASSES, "background"]
VOC20B_BACKGROUND_CLASSES = [name for name in load_classes("pc59") if name not in VOC20_CLASSES]
VOC20B_CATSEG_CLASSES = [*VOC20_CLASSES, *VOC20B_BACKGROUND_CLASSES]

_PREPARE = ("Unpack VOC2012 and SegmentationClassAug, then run CAT-Seg's datasets/prepare_voc.py "
            "(ImageSets/Segmentation/val.txt; 1..20 → 0..19; background → 255 or, for _bg, → 20).")

Prediction = TypeVar("Prediction")  # numpy array or torch tensor of class ids


def _voc2012(root: str | os.PathLike | None) -> Path:
    return dataset_root(root) / "VOCdevkit" / "VOC2012"


def voc20(root: str | os.PathLike | None = None) -> LabelFolderDataset:
    base = _voc2012(root)
    return LabelFolderDataset(
        "Pascal VOC-20", image_dir=base / "JPEGImages", label_dir=base / "annotations_detectron2" / "val",
        classes=VOC20_CLASSES, ignore_values=(255,), prepare=_PREPARE,
    )


def voc20b(root: str | os.PathLike | None = None) -> LabelFolderDataset:
    base = _voc2012(root)
    return LabelFolderDataset(
        "Pascal VOC-20b", image_dir=base / "JPEGImages", label_dir=base / "annotations_detectron2_bg" / "val",
        classes=VOC20B_CLASSES, ignore_values=(255,), prepare=_PREPARE,
    )


def collapse_background(prediction: Prediction) -> Prediction:
    """Class ids over `VOC20B_CATSEG_CLASSES` → ids over `VOC20B_CLASSES` (every background prompt → 20)."""
    return prediction.clip(max=len(VOC20_CLASSES))
