"""ADE20K-150 and ADE20K-847 validation sets in the detectron2 prepared layouts.

    <root>/ADEChallengeData2016/images/validation/<id>.jpg
    <root>/ADEChallengeData2016/annotations_detectron2/validation/<id>.png
        uint8 = original − 1, so 0 'other' → 255 = ignore
    <root>/ADE20K_2021_17_01/images_detectron2/validation/<id>.jpg   re-saved, short side ≤ 512
    <root>/ADE20K_2021_17_01/annotations_detectron2/validation/<id>.tif
        uint16 train ids 0..846, 65535 = ignore
"""

from __future__ import annotations

import os

from lsmseg.training.datasets.folder import LabelFolderDataset, dataset_root
from lsmseg.training.datasets.vocabularies import load_classes


def ade20k_150(root: str | os.PathLike | None = None) -> LabelFolderDataset:
    base = dataset_root(root) / "ADEChallengeData2016"
    return LabelFolderDataset(
        "ADE20K-150",
        image_dir=base / "images" / "validation",
        label_dir=base / "annotations_detectron2" / "validation",
        classes=load_classes("ade150"),
        ignore_values=(255,),
        prepare="Unpack ADEChallengeData2016.zip, then write annotations/validation − 1 (0 'other' wraps to "
        "255) into annotations_detectron2/validation (CAT-Seg datasets/prepare_ade20k_150.py).",
    )


def ade20k_847(root: str | os.PathLike | None = None) -> LabelFolderDataset:
    base = dataset_root(root) / "ADE20K_2021_17_01"
    return LabelFolderDataset(
        "ADE20K-847",
        image_dir=base / "images_detectron2" / "validation",
        label_dir=base / "annotations_detectron2" / "validation",
        classes=load_classes("ade847"),
        ignore_values=(65535,),
        label_ext=".tif",
        prepare="Unpack ADE20K_2021_17_01 (with index_ade20k.pkl) and run CAT-Seg's "
        "datasets/prepare_ade20k_full.py; it writes images_detectron2/ and uint16 annotations_detectron2/.",
    )
