"""Synthetic scenes: determinism, exact labels, the open-vocabulary split, captions and descriptions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsmseg.training.datasets.base import IGNORE_INDEX
from lsmseg.training.datasets.synthetic import (
    ATTRIBUTES,
    CLASSES,
    SEEN_CLASSES,
    STUFF_CLASSES,
    THING_CLASSES,
    UNSEEN_CLASSES,
    ObjectCaptions,
    Scene,
    SceneObject,
    SyntheticSample,
    SyntheticScenes,
    caption,
    describe,
    instance_boundaries,
    object_attribute_accuracy,
    render,
)
from lsmseg.training.datasets.synthetic_render import COLOUR_RGB, draw_object
from lsmseg.training.datasets.transforms import TrainTransform

TEST = SyntheticScenes("test", num_images=60, image_size=96, seed=3)
TRAIN = SyntheticScenes("train", num_images=200, image_size=64, seed=3)


def test_class_set_and_split() -> None:
    assert len(THING_CLASSES) == 48 and len(STUFF_CLASSES) == 10 and len(CLASSES) == 58 == len(set(CLASSES))
    assert len(UNSEEN_CLASSES) == 10 and len(SEEN_CLASSES) == 48
    assert set(SEEN_CLASSES) | set(UNSEEN_CLASSES) == set(CLASSES)
    assert not set(SEEN_CLASSES) & set(UNSEEN_CLASSES)
    assert {"purple star", "wooden wall", "brick floor"} <= set(UNSEEN_CLASSES)
    assert TRAIN.classes == SEEN_CLASSES and TEST.classes == CLASSES


def test_every_unseen_word_is_seen() -> None:
    seen_words = {word for name in SEEN_CLASSES for word in name.split()}
    for name in UNSEEN_CLASSES:
        assert set(name.split()) <= seen_words, name


def test_same_seed_same_arrays_and_splits_differ() -> None:
    again = SyntheticScenes("test", num_images=60, image_size=96, seed=3)
    for index in (0, 7, 59):
        first, second = TEST[index], again[index]
        np.testing.assert_array_equal(first.image, second.image)
        np.testing.assert_array_equal(first.label, second.label)
        np.testing.assert_array_equal(first.instances, second.instances)
        assert first.scene == second.scene == TEST.scene(index)
    assert not np.array_equal(TEST[0].image, SyntheticScenes("test", 60, 96, seed=4)[0].image)
    assert not np.array_equal(TEST[0].image, SyntheticScenes("train", 60, 96, seed=3)[0].image)
    assert TEST[-1].name == TEST[59].name
    with pytest.raises(IndexError):
        TEST[60]


def test_train_split_never_shows_unseen_classes() -> None:
    unseen = set(UNSEEN_CLASSES)
    for index in range(len(TRAIN)):
        sample = TRAIN[index]
        assert not set(sample.scene.segment_names) & unseen
        assert sample.label.min() >= 0 and sample.label.max() < len(SEEN_CLASSES)
    shown = {name for index in range(len(TEST)) for name in TEST.scene(index).segment_names}
    assert len(shown & unseen) >= 6  # the test split does show them


def test_labels_follow_the_segments() -> None:
    for index in range(20):
        sample = TEST[index]
        names = sample.scene.segment_names
        assert sample.image.shape == (96, 96, 3) and sample.image.dtype == np.uint8
        assert sample.label.dtype == np.int32 and (sample.label != IGNORE_INDEX).all()
        assert sample.instances.min() >= 1 and sample.instances.max() <= len(names)
        expected = np.array([CLASSES.index(name) for name in names])[sample.instances - 1]
        np.testing.assert_array_equal(sample.label, expected)
        # Pixels not under an object are stuff; object pixels are things.
        is_object = sample.instances > len(sample.scene.stuff)
        assert all(CLASSES[c] in STUFF_CLASSES for c in np.unique(sample.label[~is_object]))
        assert all(CLASSES[c] in THING_CLASSES for c in np.unique(sample.label[is_object]))


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOUR_RGB, key=lambda name: np.sum((np.array(COLOUR_RGB[name]) - rgb) ** 2))


def test_solid_objects_show_their_class_colour() -> None:
    checked = 0
    for index in range(len(TEST)):
        sample = TEST[index]
        for offset, obj in enumerate(sample.scene.objects):
            mask = sample.instances == len(sample.scene.stuff) + 1 + offset
            if obj.fill != "solid" or mask.sum() < 30:
                continue
            assert (sample.label[mask] == CLASSES.index(obj.class_name)).all()
            assert _nearest_colour(sample.image[mask].mean(axis=0)) == obj.colour, obj
            checked += 1
    assert checked >= 20


AREA = {  # in units of radius², from the shape definitions
    "circle": math.pi,
    "ring": math.pi * (1 - 0.55**2),
    "square": 1.6**2,
    "triangle": 3 * math.sqrt(3) / 4,
    "star": 5 * 0.45 * math.sin(math.pi / 5),
    "cross": 2 * 2 * 0.66 - 0.66**2,
}


@pytest.mark.parametrize("shape", sorted(AREA))
def test_shape_masks_have_the_right_area(shape: str) -> None:
    image, segments = np.zeros((128, 128, 3), np.float32), np.zeros((128, 128), np.int32)
    draw_object(image, segments, 1, np.random.default_rng(0), shape=shape, colour="red", fill="striped",
                centre=(0.5, 0.5), radius=0.3, angle=0.7)
    radius_px = 0.3 * 128
    assert (segments == 1).sum() == pytest.approx(AREA[shape] * radius_px**2, rel=0.03)
    assert (image[segments == 0] == 0).all()  # nothing painted outside the mask


def test_occlusion_later_objects_win() -> None:
    scene = Scene(("sand",), (
        SceneObject("blue square", "solid", "large", (0.5, 0.5), 0.3, 0.0),
        SceneObject("red circle", "solid", "small", (0.5, 0.5), 0.1, 0.0),
    ))
    image, segments = render(scene, 100, np.random.default_rng(0))
    assert segments[50, 50] == 3 and segments[50, 30] == 2 and segments[5, 5] == 1
    assert _nearest_colour(image[segments == 3].mean(axis=0)) == "red"
    assert _nearest_colour(image[segments == 2].mean(axis=0)) == "blue"


def test_caption_names_visible_objects_after_a_crop() -> None:
    sample = TEST[1]
    text = caption(sample)
    for k, obj in enumerate(sample.scene.objects):
        if (sample.instances == len(sample.scene.stuff) + 1 + k).sum() >= 16:
            assert obj.class_name in text
    for name in sample.scene.stuff:
        assert name in text
    cropped = TrainTransform(crop_size=24, scale_range=(1, 1), jitter=None)(sample, np.random.default_rng(0))
    assert isinstance(cropped, SyntheticSample)
    visible = {sample.scene.segment_names[k - 1] for k in np.unique(cropped.instances)}
    for name in set(sample.scene.segment_names) - visible:
        assert name not in caption(cropped, min_pixels=1)


def test_instance_boundaries() -> None:
    instances = np.ones((4, 5), np.int32)
    instances[:, 3:] = 2
    edges = instance_boundaries(instances)
    assert edges[:, 2:4].all() and not edges[:, :2].any() and not edges[:, 4].any()
    boundary = instance_boundaries(TEST[0].instances)
    assert 0 < boundary.mean() < 0.5


def test_descriptions_cover_every_class() -> None:
    for name in CLASSES:
        sentences = describe(name)
        assert set(sentences) == {"size", "shape", "texture", "colour", "combined"}
        assert all(name in sentence and len(sentence.split()) <= 40 for sentence in sentences.values())
    assert ATTRIBUTES["purple star"].kind == "thing" and "five" in describe("purple star")["shape"]
    assert "violet" in describe("purple star")["colour"]
    assert ATTRIBUTES["wooden wall"].kind == "stuff" and "horizontal" in describe("wooden wall")["shape"]
    with pytest.raises(KeyError):
        describe("green dragon")


def test_object_captions() -> None:
    pairs = ObjectCaptions(num_images=40, image_size=48, seed=1)
    again = ObjectCaptions(num_images=40, image_size=48, seed=1)
    for index in range(40):
        pair = pairs[index]
        assert pair.image.shape == (48, 48, 3) and pairs.classes[pair.class_index] == pair.text
        np.testing.assert_array_equal(pair.image, again[index].image)
    seen_only = ObjectCaptions(num_images=100, image_size=32, seed=1, classes=SEEN_CLASSES)
    assert not {seen_only[index].text for index in range(100)} & set(UNSEEN_CLASSES)
    with pytest.raises(ValueError):
        ObjectCaptions(classes=["green dragon"])


def test_object_attribute_accuracy_splits_object_pixels_by_what_went_wrong() -> None:
    index = {name: i for i, name in enumerate(CLASSES)}
    confusion = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    confusion[index["red star"], index["red star"]] = 2
    confusion[index["red star"], index["red circle"]] = 3  # right colour, wrong shape
    confusion[index["red star"], index["blue star"]] = 1  # right shape, wrong colour
    confusion[index["red star"], index["grass"]] = 4  # taken for background
    confusion[index["blue ring"], index["blue ring"]] = 10
    confusion[index["grass"], index["red star"]] = 1000  # background pixels do not count
    scores = object_attribute_accuracy(confusion, CLASSES)
    assert scores == pytest.approx({"exact": 12 / 20, "colour": 15 / 20, "shape": 13 / 20, "stuff": 4 / 20})
    with pytest.raises(ValueError, match="no pixels of a thing class"):
        object_attribute_accuracy(np.zeros((len(CLASSES), len(CLASSES))), CLASSES)
