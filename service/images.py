"""Untrusted image bytes -> RGB array: format sniffing, pixel limits before decoding, EXIF orientation, and
a working size: a large photo is decoded straight to at most `max_side` pixels a side (JPEG's DCT scaling,
then a box and bilinear reduction), so that a 6000×6000 upload costs the worker a fraction of a second and
tens of MB, not seconds and gigabytes. The model never needs more (it sees 96–640 px); label maps are scaled
back up to the full size (answers.py)."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from lsmseg.model import to_rgb_array
from lsmseg.service.errors import ApiError

logger = logging.getLogger(__name__)

SUPPORTED_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# Recognised only to say precisely what was sent instead; these are never decoded.
_OTHER_SIGNATURES = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
)
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_PILLOW_TO_RGB = ("P", "PA", "1", "LA", "RGBA", "RGBX", "CMYK", "YCbCr")
_REDUCING_GAP = 3.0  # Pillow's thumbnail(): box-reduce to within 3× of the target, then resample bilinearly
_DATA_URL = re.compile(r"^data:([\w/+.-]*)(;[\w=.-]+)*;base64,", re.IGNORECASE)


@dataclass
class DecodedImage:
    rgb: np.ndarray  # h×w×3 uint8 as displayed (EXIF orientation applied), at most max_side a side
    format: str  # PNG | JPEG | WEBP
    width: int  # the full image's size, as displayed; rgb is smaller when the image is large
    height: int

    @property
    def reduced(self) -> bool:
        return self.rgb.shape[:2] != (self.height, self.width)


def sniff_format(data: bytes) -> str | None:
    """PNG, JPEG, WEBP from the file signature, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, max_pixels: int, max_side: int | None = None) -> DecodedImage:
    """Decode PNG/JPEG/WebP bytes; 415 for other formats, 413 above `max_pixels`, 400 for broken files.
    With `max_side`, rgb is at most that many pixels a side (aspect ratio kept)."""
    if not data:
        raise ApiError(400, "invalid_image", "the image is empty")
    image_format = sniff_format(data)
    if image_format is None:
        found = next((name for magic, name in _OTHER_SIGNATURES if data.startswith(magic)), None)
        what = f"a {found} file" if found else "data that is not a known image format"
        raise ApiError(415, "unsupported_media_type", f"the image must be PNG, JPEG or WebP; got {what}")
    try:
        # Reads only the header: the size is known before any pixel is decoded.
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(None, max_pixels) from exc
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ApiError(400, "invalid_image", f"the {image_format} header cannot be read") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels((width, height), max_pixels)
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        # JPEG decodes at 1/2, 1/4 or 1/8 scale directly, never below the size asked for.
        image.draft(None, (round(width * scale), round(height * scale)))
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels((width, height), max_pixels) from exc
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError, EOFError...
        raise ApiError(400, "invalid_image", f"the {image_format} image is truncated or corrupt") from exc
    try:
        orientation = image.getexif().get(0x0112)
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
    except Exception:  # a broken EXIF block should not cost the user the whole request
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        orientation = None
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    try:
        if max_side is not None and max(image.size) > max_side:
            if image.mode not in ("RGB", "L"):  # palette and 16-bit images resample badly or not at all
                converted = image.convert("RGB") if image.mode in _PILLOW_TO_RGB else None
                image = converted or Image.fromarray(to_rgb_array(image))
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)
        # The common case (an RGB photo) needs one copy; every other mode goes through the model's converter.
        rgb = np.asarray(image) if image.mode == "RGB" else to_rgb_array(image)
    except (ValueError, OSError) as exc:
        raise ApiError(400, "invalid_image", f"cannot convert image mode {image.mode} to RGB") from exc
    return DecodedImage(rgb=rgb, format=image_format, width=width, height=height)


def decode_base64_image(text: str) -> bytes:
    """Bytes of a base64 (or `data:image/...;base64,`) string; image URLs are refused, never fetched."""
    text = text.strip()
    if text.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise ApiError(
            400, "image_url_not_supported", "image URLs are not fetched; send the image bytes as base64"
        )
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", "`image` is not valid base64") from exc


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> ApiError:
    # Without a size, Pillow's own guard (set to our limit) refused it: it is above twice the limit.
    shown = f"{size[0]}×{size[1]} pixels" if size else f"more than {2 * max_pixels} pixels"
    return ApiError(413, "image_too_large", f"the image has {shown}; at most {max_pixels} are allowed")
