"""Transforms: sizes, reproducibility, label validity, image/label agreement; collate."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
import torch

from lsmseg.training.datasets.base import IGNORE_INDEX, Sample, TransformedDataset
from lsmseg.training.datasets.collate import collate
from lsmseg.training.datasets.transforms import ColorJitter, EvalTransform, TrainTransform, hflip, resize

NO_JITTER = ColorJitter(0, 0, 0, 0)  # identity (checked below); jitter=None skips it altogether


def make_sample(height: int = 40, width: int = 60, seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 5, (height, width)).astype(np.int32)
    label[:3] = IGNORE_INDEX
    image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    instances = (np.arange(height * width).reshape(height, width) % 7 + 1).astype(np.int32)
    return Sample(image=image, label=label, name="s", instances=instances)


def test_train_transform_shapes_and_valid_labels() -> None:
    transform = TrainTransform(crop_size=32)
    sample = make_sample()
    for seed in range(10):
        out = transform(sample, np.random.default_rng(seed))
        assert out.image.shape == (32, 32, 3) and out.image.dtype == np.uint8
        assert out.label.shape == (32, 32) and out.label.dtype == np.int32
        assert out.instances.shape == (32, 32)
        assert set(np.unique(out.label)) <= {IGNORE_INDEX, 0, 1, 2, 3, 4}
        assert set(np.unique(out.instances)) <= {IGNORE_INDEX, *range(1, 8)}


def test_train_transform_is_reproducible_from_the_generator() -> None:
    transform, sample = TrainTransform(crop_size=24), make_sample()
    first = transform(sample, np.random.default_rng(7))
    again = transform(sample, np.random.default_rng(7))
    other = transform(sample, np.random.default_rng(8))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    assert not np.array_equal(first.image, other.image)


def test_small_images_are_padded_with_ignore() -> None:
    sample = make_sample(10, 12)
    out = TrainTransform(crop_size=32, scale_range=(0.5, 0.5), flip_prob=0, jitter=NO_JITTER)(
        sample, np.random.default_rng(0)
    )
    # Short side 10 → 16, so 16×19 of content in a 32×32 crop; the rest is padding.
    assert (out.label[16:] == IGNORE_INDEX).all() and (out.label[:, 19:] == IGNORE_INDEX).all()
    assert (out.image[16:] == 0).all() and (out.instances[16:] == IGNORE_INDEX).all()
    assert (out.label[5:16, :19] >= 0).all()  # the top three source rows are ignore


def test_hflip_moves_image_label_and_instances_together() -> None:
    sample = make_sample()
    flipped = hflip(sample)
    np.testing.assert_array_equal(flipped.image[:, 0], sample.image[:, -1])
    np.testing.assert_array_equal(flipped.label[:, 0], sample.label[:, -1])
    np.testing.assert_array_equal(flipped.instances[:, 5], sample.instances[:, -6])
    np.testing.assert_array_equal(hflip(flipped).image, sample.image)


def test_train_transform_keeps_image_and_label_aligned() -> None:
    # Image colour encodes the label; at scale 1 with an image-sized crop only the flip moves pixels.
    label = np.zeros((32, 32), np.int32)
    label[:, :10] = 1
    label[5:9, 20:30] = 2
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], np.uint8)
    sample = Sample(image=palette[label], label=label, name="aligned")
    transform = TrainTransform(crop_size=32, scale_range=(1, 1), flip_prob=1.0, jitter=None)
    out = transform(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out.label[:, -10:], 1)  # the left band is now on the right
    np.testing.assert_array_equal(out.image, palette[out.label])


def test_color_jitter() -> None:
    image = make_sample().image
    np.testing.assert_array_equal(NO_JITTER(image, np.random.default_rng(0)), image)
    hue_only = ColorJitter(0, 0, 0, 0.2)(image, np.random.default_rng(3))
    assert not np.array_equal(hue_only, image)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(hue_only @ luma - image @ luma).mean() < 6  # hue rotation keeps brightness (up to clipping)
    darker = ColorJitter(brightness=0.5, contrast=0, saturation=0, hue=0)
    rng = np.random.default_rng(0)
    factor = np.random.default_rng(0).uniform(0.5, 1.5)
    expected = np.clip(image * factor + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(darker(image, rng), expected, atol=1)


def test_eval_transform_sizes() -> None:
    sample = make_sample(40, 60)
    assert EvalTransform(20)(sample).image.shape == (20, 30, 3)
    assert EvalTransform(20, max_size=24)(sample).label.shape == (16, 24)
    square = EvalTransform(16, mode="square")(sample)
    assert square.image.shape == (16, 16, 3) and square.instances.shape == (16, 16)
    kept = EvalTransform(20, resize_label=False)(sample)
    assert kept.image.shape == (20, 30, 3)
    np.testing.assert_array_equal(kept.label, sample.label)
    np.testing.assert_array_equal(EvalTransform(20)(sample).label, EvalTransform(20)(sample).label)
    with pytest.raises(ValueError):
        EvalTransform(20, mode="long_side")


def test_nearest_resize_keeps_label_values() -> None:
    sample = make_sample()
    assert set(np.unique(resize(sample, 17, 23).label)) <= set(np.unique(sample.label))


def test_transforms_keep_subclass_fields() -> None:
    @dataclasses.dataclass(kw_only=True)
    class Tagged(Sample):
        tag: str

    sample = make_sample()
    tagged = Tagged(image=sample.image, label=sample.label, name="t", tag="kept")
    out = TrainTransform(crop_size=16)(tagged, np.random.default_rng(0))
    assert isinstance(out, Tagged) and out.tag == "kept"


def test_transformed_dataset_seeds_each_item() -> None:
    class Three(list):
        classes: ClassVar[list[str]] = ["a", "b", "c", "d", "e"]

    samples = Three(make_sample(seed=index) for index in range(3))
    dataset = TransformedDataset(samples, TrainTransform(16), seed=5)
    assert dataset.classes == Three.classes and len(dataset) == 3
    np.testing.assert_array_equal(dataset[1].image, dataset[1].image)
    np.testing.assert_array_equal(dataset[-1].image, dataset[2].image)


def test_collate() -> None:
    transform = TrainTransform(crop_size=16)
    samples = [transform(make_sample(seed=index), np.random.default_rng(index)) for index in range(3)]
    batch = collate(samples)
    assert batch.images.shape == (3, 3, 16, 16) and batch.images.dtype == torch.float32
    assert batch.images.is_contiguous() and batch.images.min() >= 0 and batch.images.max() <= 1
    torch.testing.assert_close(batch.images[1, 2], torch.from_numpy(samples[1].image[..., 2]).float() / 255)
    assert batch.labels.shape == (3, 16, 16) and batch.labels.dtype == torch.int64
    assert torch.equal(batch.labels[2], torch.from_numpy(samples[2].label).long())
    assert batch.instances.shape == (3, 16, 16) and batch.names == ["s", "s", "s"]
    assert collate([dataclasses.replace(s, instances=None) for s in samples]).instances is None
    with pytest.raises(ValueError, match="one size"):
        collate([samples[0], make_sample()])
