"""Untrusted image bytes -> RGB array: format sniffing, pixel limits before decoding, EXIF orientation."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from model import to_rgb_array
from service.errors import ApiError

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
_DATA_URL = re.compile(r"^data:([\w/+.-]*)(;[\w=.-]+)*;base64,", re.IGNORECASE)


@dataclass
class DecodedImage:
    rgb: np.ndarray  # H×W×3 uint8, as displayed (EXIF orientation applied)
    format: str  # PNG | JPEG | WEBP

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def sniff_format(data: bytes) -> str | None:
    """PNG, JPEG, WEBP from the file signature, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode PNG/JPEG/WebP bytes; 415 for other formats, 413 above `max_pixels`, 400 for broken files."""
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
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels((width, height), max_pixels) from exc
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError, EOFError...
        raise ApiError(400, "invalid_image", f"the {image_format} image is truncated or corrupt") from exc
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
    except Exception:  # a broken EXIF block should not cost the user the whole request
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
    try:
        # The common case (an RGB photo) needs one copy; every other mode goes through the model's converter.
        rgb = np.asarray(image) if image.mode == "RGB" else to_rgb_array(image)
    except (ValueError, OSError) as exc:
        raise ApiError(400, "invalid_image", f"cannot convert image mode {image.mode} to RGB") from exc
    return DecodedImage(rgb=rgb, format=image_format)


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
