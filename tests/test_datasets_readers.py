"""Benchmark readers on tiny datasets written here in each prepared layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lsmseg.training.datasets import (
    DATASETS,
    IGNORE_INDEX,
    DatasetNotFoundError,
    EvalTransform,
    build_dataset,
)
from lsmseg.training.datasets.synthetic import CLASSES, SEEN_CLASSES
from lsmseg.training.datasets.voc import (
    VOC20B_BACKGROUND_CLASSES,
    VOC20B_CATSEG_CLASSES,
    VOC20B_CLASSES,
    collapse_background,
)
from lsmseg.training.datasets.vocabularies import load_classes

# name: (image dir, label dir, label extension, label dtype, raw values to write, expected label values)
LAYOUTS = {
    "coco171-train": ("coco-stuff/images/train2017", "coco-stuff/annotations_detectron2/train2017", ".png",
                      np.uint8, [0, 170, 255, 57], [0, 170, IGNORE_INDEX, 57]),
    "coco171-val": ("coco-stuff/images/val2017", "coco-stuff/annotations_detectron2/val2017", ".png",
                    np.uint8, [0, 170, 255, 57], [0, 170, IGNORE_INDEX, 57]),
    "ade150": ("ADEChallengeData2016/images/validation",
               "ADEChallengeData2016/annotations_detectron2/validation", ".png", np.uint8,
               [0, 149, 255, 2], [0, 149, IGNORE_INDEX, 2]),
    "ade847": ("ADE20K_2021_17_01/images_detectron2/validation",
               "ADE20K_2021_17_01/annotations_detectron2/validation", ".tif", np.uint16,
               [846, 255, 65535, 300], [846, 255, IGNORE_INDEX, 300]),
    "pc59": ("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc59_val", ".png",
             np.uint8, [58, 0, 255, 30], [58, 0, IGNORE_INDEX, 30]),
    "pc459": ("VOCdevkit/VOC2010/JPEGImages", "VOCdevkit/VOC2010/annotations_detectron2/pc459_val", ".tif",
              np.uint16, [458, 255, 459, 65535], [458, 255, IGNORE_INDEX, IGNORE_INDEX]),
    "voc20": ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2/val", ".png",
              np.uint8, [19, 0, 255, 7], [19, 0, IGNORE_INDEX, 7]),
    "voc20b": ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/annotations_detectron2_bg/val", ".png",
               np.uint8, [20, 0, 255, 19], [20, 0, IGNORE_INDEX, 19]),
}
VOCABULARY = {"coco171-train": "coco171", "coco171-val": "coco171", "ade150": "ade150", "ade847": "ade847",
              "pc59": "pc59", "pc459": "pc459", "voc20": "voc20"}
STEMS = ["b_0002", "a_0001", "c_0003"]
COLOURS = {"a_0001": (200, 30, 30), "b_0002": (30, 200, 30), "c_0003": (30, 30, 200)}


def _label_map(values: list[int], dtype: type) -> np.ndarray:
    """A 6×8 map: four 3×4 quadrants holding the four values."""
    top = np.concatenate([np.full((3, 4), values[0]), np.full((3, 4), values[1])], axis=1)
    bottom = np.concatenate([np.full((3, 4), values[2]), np.full((3, 4), values[3])], axis=1)
    return np.concatenate([top, bottom]).astype(dtype)


def write_layout(root: Path, name: str, stems: list[str] = STEMS, extra_images: int = 2) -> None:
    image_dir, label_dir, ext, dtype, raw, _ = LAYOUTS[name]
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / label_dir).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        Image.fromarray(_label_map(raw, dtype)).save(root / label_dir / f"{stem}{ext}")
        Image.fromarray(np.full((6, 8, 3), COLOURS[stem], np.uint8)).save(root / image_dir / f"{stem}.jpg",
                                                                           quality=95)
    for index in range(extra_images):  # images without labels (e.g. VOC train images) are not part of the set
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / image_dir / f"z_extra_{index}.jpg")


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_reader_labels_classes_and_pairing(tmp_path: Path, name: str) -> None:
    write_layout(tmp_path, name)
    dataset = build_dataset(name, root=tmp_path)
    expected_classes = VOC20B_CLASSES if name == "voc20b" else load_classes(VOCABULARY[name])
    assert dataset.classes == expected_classes
    assert len(dataset) == len(STEMS)
    expected = _label_map(LAYOUTS[name][5], np.int32)
    for index, stem in enumerate(sorted(STEMS)):
        sample = dataset[index]
        assert sample.name == stem
        assert sample.image.shape == (6, 8, 3) and sample.image.dtype == np.uint8
        assert np.abs(sample.image.astype(int) - COLOURS[stem]).max() <= 8  # the image with the same stem
        assert sample.label.dtype == np.int32
        np.testing.assert_array_equal(sample.label, expected)


def test_named_values_mean_the_right_classes(tmp_path: Path) -> None:
    write_layout(tmp_path, "ade150")
    ade = build_dataset("ade150", root=tmp_path)
    assert ade.classes[ade[0].label[0, 0]] == "wall"  # prepared value 0 = original 1 = wall
    write_layout(tmp_path, "voc20b")
    voc = build_dataset("voc20b", root=tmp_path)
    assert voc.classes[voc[0].label[0, 0]] == "background"
    assert voc.classes[voc[0].label[0, 4]] == "aeroplane"


def test_pc459_signed_tiff_minus_one_is_ignored(tmp_path: Path) -> None:
    write_layout(tmp_path, "pc459")
    label_dir = tmp_path / LAYOUTS["pc459"][1]
    Image.fromarray(_label_map([-1, 0, 458, 12], np.int32)).save(label_dir / "a_0001.tif")
    label = build_dataset("pc459", root=tmp_path)[0].label
    np.testing.assert_array_equal(label, _label_map([IGNORE_INDEX, 0, 458, 12], np.int32))


def test_default_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_layout(tmp_path, "voc20")
    monkeypatch.setenv("LSMSEG_DATASETS", str(tmp_path))
    assert len(build_dataset("voc20")) == len(STEMS)


def test_missing_folder_error_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset("ade847", root=tmp_path)
    assert isinstance(error.value, FileNotFoundError)
    message = str(error.value)
    assert str((tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation").resolve()) in message
    assert "prepare_ade20k_full.py" in message and "training/datasets/README.md" in message


def test_label_without_image_is_an_error(tmp_path: Path) -> None:
    write_layout(tmp_path, "pc59")
    (tmp_path / LAYOUTS["pc59"][0] / "b_0002.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"b_0002\.jpg"):
        build_dataset("pc59", root=tmp_path)


def test_unprepared_label_values_are_reported(tmp_path: Path) -> None:
    write_layout(tmp_path, "coco171-val")
    label_dir = tmp_path / LAYOUTS["coco171-val"][1]
    Image.fromarray(_label_map([0, 181, 255, 3], np.uint8)).save(label_dir / "a_0001.png")  # a raw COCO id
    with pytest.raises(ValueError, match="181"):
        build_dataset("coco171-val", root=tmp_path)[0]


def test_build_with_transform(tmp_path: Path) -> None:
    write_layout(tmp_path, "voc20")
    dataset = build_dataset("voc20", root=tmp_path, transform=EvalTransform(12, mode="square"))
    sample = dataset[0]
    assert sample.image.shape == (12, 12, 3) and sample.label.shape == (12, 12)
    assert set(np.unique(sample.label)) <= {19, 0, 7, IGNORE_INDEX}


def test_registry_names_and_unknown_name() -> None:
    assert set(LAYOUTS) | {"synthetic-train", "synthetic-test"} == set(DATASETS)
    with pytest.raises(KeyError, match="known"):
        build_dataset("cityscapes")


def test_registry_builds_synthetic_sets() -> None:
    train, test = build_dataset("synthetic-train"), build_dataset("synthetic-test")
    assert train.classes == SEEN_CLASSES and test.classes == CLASSES
    assert len(train) == 4000 and train[0].image.shape == (128, 128, 3)


def test_voc20b_catseg_protocol() -> None:
    assert len(VOC20B_BACKGROUND_CLASSES) == 39 and len(VOC20B_CATSEG_CLASSES) == 59
    assert not set(VOC20B_BACKGROUND_CLASSES) & set(load_classes("voc20"))
    prediction = np.array([0, 19, 20, 41, 58])
    np.testing.assert_array_equal(collapse_background(prediction), [0, 19, 20, 20, 20])
    assert collapse_background(torch.tensor([3, 58])).tolist() == [3, 20]
