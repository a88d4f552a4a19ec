"""A segmentation -> what POST /segment answers: the label PNG, segments with COCO RLE, the overlay.

Label maps, areas and RLE are at the full image size, also when the model saw a reduced copy (images.py):
the label map is scaled up by nearest neighbour first. The overlay stays at the copy's size (it is for
people to look at, and a full-size one of a 40-megapixel photo would cost seconds and hundreds of MB).
"""

from __future__ import annotations

import base64

import numpy as np

from lsmseg.service.engine import SegmentOutput
from lsmseg.service.images import DecodedImage
from lsmseg.service.masks import (
    class_rle,
    compact_labels,
    label_png,
    overlay_png,
    palette_hex,
    scale_labels,
    scaled_areas,
)
from lsmseg.service.schemas import EncodedImage, Rle, Segment, SegmentOptions, SegmentResponse
from lsmseg.service.vocabularies import ResolvedVocab


def png_answer(decoded: DecodedImage, output: SegmentOutput, vocab: ResolvedVocab, overlay: bool) -> bytes:
    """The label PNG itself, or the overlay when asked (`Accept: image/png`)."""
    if overlay:
        return overlay_png(decoded.rgb, output.segmentation.label_map)
    return label_png(_full_size_labels(decoded, output, vocab), len(vocab.classes))


def json_answer(
    decoded: DecodedImage, output: SegmentOutput, vocab: ResolvedVocab, options: SegmentOptions
) -> SegmentResponse:
    segmentation = output.segmentation
    label_map = _full_size_labels(decoded, output, vocab)
    areas = segmentation.areas
    if decoded.reduced:  # the pixels of the answer, so that areas agree with its PNG and RLE
        areas = scaled_areas(segmentation.label_map, decoded.height, decoded.width, len(vocab.classes))
    with_rle = options.output in ("rle", "both")
    colours = palette_hex(len(vocab.classes)) if options.overlay else None
    segments = [
        Segment(
            class_name=vocab.classes[index],
            index=int(index),
            area=int(areas[index]),
            score=round(float(segmentation.scores[index]), 4),
            colour=colours[index] if colours is not None else None,
            rle=Rle(**class_rle(label_map, int(index))) if with_rle else None,
        )
        for index in np.flatnonzero(areas)
    ]
    png = label_png(label_map, len(vocab.classes)) if options.output in ("label_png", "both") else None
    overlay = overlay_png(decoded.rgb, segmentation.label_map) if options.overlay else None
    return SegmentResponse(
        vocab_id=vocab.vocab_id,
        width=decoded.width,
        height=decoded.height,
        classes=vocab.classes,
        label_map=EncodedImage(data=_b64(png)) if png is not None else None,
        overlay=EncodedImage(data=_b64(overlay)) if overlay is not None else None,
        segments=segments,
        timings_ms={},
    )


def _full_size_labels(decoded: DecodedImage, output: SegmentOutput, vocab: ResolvedVocab) -> np.ndarray:
    small = compact_labels(output.segmentation.label_map, len(vocab.classes))
    return scale_labels(small, decoded.height, decoded.width)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
