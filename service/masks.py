"""Mask encodings: label-map PNG, COCO RLE (pycocotools' format) and a colour overlay for people."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from lsmseg.model.palette import palette

MAX_8BIT_CLASSES = 256
# Level 1 is several times faster than the default 6 and label maps still shrink ~20× at it.
_PNG_COMPRESSION = 1


def palette_hex(num_colours: int) -> list[str]:
    """The palette as CSS colours ("#rrggbb"), e.g. for a legend beside the overlay."""
    return [f"#{red:02x}{green:02x}{blue:02x}" for red, green, blue in palette(num_colours).tolist()]


def compact_labels(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """The label map in the smallest dtype that holds its classes (uint8 up to 256, else uint16)."""
    return label_map.astype(np.uint8 if num_classes <= MAX_8BIT_CLASSES else np.uint16, copy=False)


def scale_labels(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """The label map at height × width, nearest neighbour: each pixel takes the label under its centre."""
    if label_map.shape == (height, width):
        return label_map
    rows, columns = _repeats(label_map.shape[0], height), _repeats(label_map.shape[1], width)
    return np.repeat(np.repeat(label_map, rows, axis=0), columns, axis=1)  # 5× faster than fancy indexing


def scaled_areas(label_map: np.ndarray, height: int, width: int, num_classes: int) -> np.ndarray:
    """Pixels per class in scale_labels(label_map, height, width), counted on the small map (a bincount
    of 40 megapixels takes ~0.3 s): each small pixel weighs as many pixels as it becomes."""
    rows, columns = _repeats(label_map.shape[0], height), _repeats(label_map.shape[1], width)
    weights = np.outer(rows, columns).ravel()
    return np.bincount(label_map.ravel(), weights=weights, minlength=num_classes).round().astype(np.int64)


def _repeats(small: int, full: int) -> np.ndarray:
    """How many of `full` pixels take each of `small` pixels' label (nearest, by pixel centre)."""
    sources = ((np.arange(full) + 0.5) * (small / full)).astype(np.intp)
    return np.bincount(sources, minlength=small)


def label_png(label_map: np.ndarray, num_classes: int) -> bytes:
    """PNG whose pixel values are class indices: 8-bit palette image up to 256 classes, else 16-bit gray."""
    image = Image.fromarray(compact_labels(label_map, num_classes))
    if num_classes <= MAX_8BIT_CLASSES:
        image.putpalette(palette(MAX_8BIT_CLASSES).tobytes())  # L -> P: viewable as is, values stay indices
    # else mode I;16: a 16-bit grayscale PNG
    return _png(image)


def class_rle(label_map: np.ndarray, index: int) -> dict[str, object]:
    """COCO RLE of `label_map == index`: {"size": [h, w], "counts": str}, decodable by pycocotools."""
    binary = np.asfortranarray(label_map == index, dtype=np.uint8)  # pycocotools runs are column-major
    rle = coco_mask.encode(binary)
    return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}


def overlay_png(rgb: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> bytes:
    """The image with every pixel tinted by its class colour (same palette as the label PNG)."""
    colours = palette(int(label_map.max()) + 1)[label_map]
    blended = rgb.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha
    return _png(Image.fromarray(blended.round().astype(np.uint8)))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=_PNG_COMPRESSION)
    return buffer.getvalue()
