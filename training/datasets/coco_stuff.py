"""COCO-Stuff-171 (training set of the paper, §4.1) in the detectron2 prepared layout.

    <root>/coco-stuff/images/{train2017,val2017}/<id>.jpg
    <root>/coco-stuff/annotations_detectron2/{train2017,val2017}/<id>.png
        uint8 train ids 0..170, 255 = ignore
"""

from __future__ import annotations

import os
from typing import Literal

from lsmseg.training.datasets.folder import LabelFolderDataset, dataset_root
from lsmseg.training.datasets.vocabularies import load_classes

SPLITS = {"train": "train2017", "val": "val2017"}


def coco_stuff_171(
    root: str | os.PathLike | None = None, split: Literal["train", "val"] = "train"
) -> LabelFolderDataset:
    if split not in SPLITS:
        raise ValueError(f"COCO-Stuff split must be one of {sorted(SPLITS)}, got {split!r}")
    base = dataset_root(root) / "coco-stuff"
    folder = SPLITS[split]
    return LabelFolderDataset(
        f"COCO-Stuff-171 {split}",
        image_dir=base / "images" / folder,
        label_dir=base / "annotations_detectron2" / folder,
        classes=load_classes("coco171"),
        ignore_values=(255,),
        prepare="Unpack train2017/val2017 and stuffthingmaps_trainval2017 into coco-stuff/, then map the raw "
        "ids to 171 train ids (CAT-Seg datasets/prepare_coco_stuff.py).",
    )
