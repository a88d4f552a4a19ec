"""Geometric and photometric transforms on `Sample`s (numpy in, numpy out; the loop makes tensors).

Every random choice is drawn from the `numpy.random.Generator` passed in, so the same generator state gives
the same output. Images resize bilinearly; labels and instance maps with nearest neighbour, so they only
ever hold values that were already there; padding is IGNORE_INDEX in labels and black in images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from lsmseg.training.datasets.base import IGNORE_INDEX, Sample

# YIQ: hue is a rotation of the (I, Q) chroma plane, which keeps luma fixed and needs no HSV round trip.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)
_LUMA = _RGB_TO_YIQ[0]


def _map_maps(sample: Sample, fn) -> dict[str, np.ndarray | None]:
    """`fn` applied to the label and the instance map (when present), as replace() keyword arguments."""
    instances = None if sample.instances is None else fn(sample.instances)
    return {"label": fn(sample.label), "instances": instances}


def resize(sample: Sample, height: int, width: int) -> Sample:
    def nearest(values: np.ndarray) -> np.ndarray:
        return np.array(Image.fromarray(values.astype(np.int32)).resize((width, height), Image.NEAREST))

    image = np.array(Image.fromarray(sample.image).resize((width, height), Image.BILINEAR))
    return dataclasses.replace(sample, image=image, **_map_maps(sample, nearest))


def hflip(sample: Sample) -> Sample:
    def flip(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values[:, ::-1])

    return dataclasses.replace(sample, image=flip(sample.image), **_map_maps(sample, flip))


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    def cut(values: np.ndarray) -> np.ndarray:
        return values[top : top + height, left : left + width].copy()

    return dataclasses.replace(sample, image=cut(sample.image), **_map_maps(sample, cut))


def pad(sample: Sample, height: int, width: int) -> Sample:
    """Pad bottom and right up to at least height × width."""
    extra_h, extra_w = max(height - sample.label.shape[0], 0), max(width - sample.label.shape[1], 0)
    if not extra_h and not extra_w:
        return sample

    def fill(values: np.ndarray, value: int) -> np.ndarray:
        widths = [(0, extra_h), (0, extra_w)] + [(0, 0)] * (values.ndim - 2)
        return np.pad(values, widths, constant_values=value)

    return dataclasses.replace(
        sample, image=fill(sample.image, 0), **_map_maps(sample, lambda values: fill(values, IGNORE_INDEX))
    )


@dataclass(frozen=True)
class ColorJitter:
    """Random brightness, contrast, saturation (factors in 1 ± value) and hue (± value of a full turn)."""

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.04

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, c, s = (rng.uniform(1 - v, 1 + v) for v in (self.brightness, self.contrast, self.saturation))
        angle = rng.uniform(-self.hue, self.hue) * 2 * np.pi
        x = image.astype(np.float32) * b
        luma = x @ _LUMA
        x = (x - luma.mean()) * c + luma.mean()
        luma = (x @ _LUMA)[..., None]
        x = (x - luma) * s + luma
        if angle:
            cos, sin = np.cos(angle), np.sin(angle)
            rotate = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], np.float32)
            x = x @ (_YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ).T
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)


DEFAULT_JITTER = ColorJitter()


class TrainTransform:
    """Scale jitter (short side → crop_size × U(scale_range)), random crop_size² crop, flip, colour jitter."""

    def __init__(
        self,
        crop_size: int = 384,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_prob: float = 0.5,
        jitter: ColorJitter | None = DEFAULT_JITTER,
    ) -> None:
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.flip_prob = flip_prob
        self.jitter = jitter  # None: no photometric change

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        size = self.crop_size
        height, width = sample.label.shape
        short = size * rng.uniform(*self.scale_range)
        factor = short / min(height, width)
        sample = resize(sample, max(round(height * factor), 1), max(round(width * factor), 1))
        sample = pad(sample, size, size)
        height, width = sample.label.shape
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        sample = crop(sample, top, left, size, size)
        if rng.random() < self.flip_prob:
            sample = hflip(sample)
        if self.jitter is None:
            return sample
        return dataclasses.replace(sample, image=self.jitter(sample.image, rng))


class EvalTransform:
    """Deterministic resize: short side to `size` (capped so the long side ≤ `max_size`) or a size² square.

    `resize_label=False` keeps the label at its original size, which is how benchmark mIoU is scored
    (predictions resized back to the label); True makes equal-size batches possible.
    """

    def __init__(
        self,
        size: int,
        mode: Literal["short_side", "square"] = "short_side",
        max_size: int | None = None,
        resize_label: bool = True,
    ) -> None:
        if mode not in ("short_side", "square"):
            raise ValueError(f"mode must be 'short_side' or 'square', got {mode!r}")
        self.size, self.mode, self.max_size, self.resize_label = size, mode, max_size, resize_label

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.mode == "square":
            return self.size, self.size
        factor = self.size / min(height, width)
        if self.max_size is not None:
            factor = min(factor, self.max_size / max(height, width))
        return max(round(height * factor), 1), max(round(width * factor), 1)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        resized = resize(sample, *self.output_size(*sample.label.shape))
        if self.resize_label:
            return resized
        return dataclasses.replace(sample, image=resized.image)
