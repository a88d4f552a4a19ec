"""Image folder + label-map folder paired by file stem: the prepared layout every benchmark reader uses."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lsmseg.training.datasets.base import IGNORE_INDEX, DatasetNotFoundError, Sample

README = "training/datasets/README.md"


def dataset_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $LSMSEG_DATASETS, else $DETECTRON2_DATASETS (CAT-Seg's variable), else ./datasets."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("LSMSEG_DATASETS") or os.environ.get("DETECTRON2_DATASETS") or "datasets")


def read_label(path: Path) -> np.ndarray:
    """Raw label values of an 8-bit PNG (grey or palette) or a 16/32-bit TIFF, as int64."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"{path}: label maps must be 1-channel integer images, not mode {image.mode}")
        return np.asarray(image).astype(np.int64)  # P gives palette indices, which are the label values


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class LabelFolderDataset:
    """Pairs `label_dir/<stem><label_ext>` with `image_dir/<stem><image_ext>`; labels drive the list.

    Raw values in `ignore_values` become IGNORE_INDEX; any other value outside [0, len(classes)) is an error,
    because it means the folder was not prepared for this class list (e.g. raw COCO ids instead of train ids).
    """

    def __init__(
        self,
        title: str,
        image_dir: Path,
        label_dir: Path,
        classes: Sequence[str],
        *,
        ignore_values: Sequence[int] = (255,),
        image_ext: str = ".jpg",
        label_ext: str = ".png",
        prepare: str = "",
    ) -> None:
        self.title = title
        self.image_dir = image_dir
        self.label_dir = label_dir
        self.classes = list(classes)
        self.ignore_values = tuple(ignore_values)
        for folder in (label_dir, image_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{title}: expected folder {folder.resolve()} does not exist. {prepare} "
                    f"See {README} for the layout; the datasets root is the `root` argument, "
                    "else $LSMSEG_DATASETS, else $DETECTRON2_DATASETS, else ./datasets."
                )
        stems = sorted(entry.name[: -len(label_ext)] for entry in os.scandir(label_dir)
                       if entry.name.endswith(label_ext))
        if not stems:
            raise DatasetNotFoundError(f"{title}: no *{label_ext} files in {label_dir.resolve()}. {prepare}")
        self.images = [image_dir / f"{stem}{image_ext}" for stem in stems]
        self.labels = [label_dir / f"{stem}{label_ext}" for stem in stems]
        missing = [path.name for path in self.images if not path.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"{title}: {len(missing)} of {len(stems)} label maps in {label_dir} have no image in "
                f"{image_dir} (first: {missing[:3]})"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        image = read_image(self.images[index])
        raw = read_label(self.labels[index])
        if raw.shape != image.shape[:2]:
            raise ValueError(f"{self.labels[index]}: label {raw.shape} ≠ image {image.shape[:2]} in size")
        ignored = np.isin(raw, self.ignore_values)
        invalid = ~ignored & ((raw < 0) | (raw >= len(self.classes)))
        if invalid.any():
            raise ValueError(
                f"{self.labels[index]}: label values {np.unique(raw[invalid])[:5].tolist()} are neither "
                f"class ids 0..{len(self.classes) - 1} nor ignore values {self.ignore_values}; "
                f"was it prepared for {self.title}? See {README}."
            )
        label = np.where(ignored, IGNORE_INDEX, raw).astype(np.int32)
        return Sample(image=image, label=label, name=self.labels[index].stem)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.title!r}, {len(self)} images, {len(self.classes)} classes)"
