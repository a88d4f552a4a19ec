"""Pascal Context-59 and -459 validation sets (VOC2010 images) in the detectron2 prepared layouts.

    <root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2010/annotations_detectron2/pc59_val/<id>.png   uint8 0..58, 255 = ignore
    <root>/VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif  16-bit, LabelMap − 1 = 0..458

PC-459 ignore value: CAT-Seg registers 459 as the ignore label, but its preparation writes `LabelMap − 1` as
uint16, where an unlabelled pixel (LabelMap 0) wraps to 65535 (or −1 in a signed 32-bit TIFF). We ignore all
three, so the reader is right whichever way a copy was written; any other value ≥ 459 is reported as an error.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsmseg.training.datasets.folder import LabelFolderDataset, dataset_root
from lsmseg.training.datasets.vocabularies import load_classes

PC459_IGNORE = (459, 65535, -1)


def _voc2010(root: str | os.PathLike | None) -> Path:
    return dataset_root(root) / "VOCdevkit" / "VOC2010"


def pascal_context_59(root: str | os.PathLike | None = None) -> LabelFolderDataset:
    base = _voc2010(root)
    return LabelFolderDataset(
        "Pascal Context-59",
        image_dir=base / "JPEGImages",
        label_dir=base / "annotations_detectron2" / "pc59_val",
        classes=load_classes("pc59"),
        ignore_values=(255,),
        prepare="Unpack VOC2010 and trainval_merged.json, then run CAT-Seg's "
        "datasets/prepare_pascal_context_59.py (59 classes, background → 255).",
    )


def pascal_context_459(root: str | os.PathLike | None = None) -> LabelFolderDataset:
    base = _voc2010(root)
    return LabelFolderDataset(
        "Pascal Context-459",
        image_dir=base / "JPEGImages",
        label_dir=base / "annotations_detectron2" / "pc459_val",
        classes=load_classes("pc459"),
        ignore_values=PC459_IGNORE,
        label_ext=".tif",
        prepare="Unpack VOC2010 and the full Pascal Context trainval/*.mat, then run CAT-Seg's "
        "datasets/prepare_pascal_context_459.py (LabelMap − 1 as TIFF for the 5105 val ids).",
    )
