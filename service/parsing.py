"""POST /segment bodies, multipart or JSON, -> (image bytes, options). Bytes only: decoding is images.py's."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError as PydanticValidationError
from starlette.datastructures import UploadFile

from lsmseg.service.errors import ApiError
from lsmseg.service.images import decode_base64_image
from lsmseg.service.schemas import SegmentJsonRequest, SegmentOptions

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
_FORM_FIELDS = ("image", *SegmentOptions.model_fields)
_MAX_FORM_FIELD_BYTES = 4 * 2**20  # `classes` of a few thousand names fits easily


async def read_segment_request(request: Request) -> tuple[bytes, SegmentOptions]:
    media_type = media_type_of(request.headers.get("content-type"))
    if media_type == JSON_TYPE:
        return await _read_json(request)
    if media_type == MULTIPART_TYPE:
        return await _read_multipart(request)
    shown = media_type or "no content type"
    raise ApiError(
        415, "unsupported_media_type", f"send {MULTIPART_TYPE} or {JSON_TYPE}, not {shown[:100]}"
    )


def media_type_of(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


async def _read_json(request: Request) -> tuple[bytes, SegmentOptions]:
    payload = parse_json(await request.body(), "the request body")
    parsed = _validate(SegmentJsonRequest, payload)
    options = SegmentOptions.model_validate(parsed.model_dump(exclude={"image"}))
    return decode_base64_image(parsed.image), options


async def _read_multipart(request: Request) -> tuple[bytes, SegmentOptions]:
    form = await request.form(
        max_files=1, max_fields=len(_FORM_FIELDS), max_part_size=_MAX_FORM_FIELD_BYTES
    )
    try:
        image = form.get("image")
        if image is None:
            raise _field_error("image", "a file part named `image` is required")
        if not isinstance(image, UploadFile):
            raise _field_error("image", "`image` must be a file part (JSON bodies take base64 instead)")
        declared = media_type_of(image.content_type)
        if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
            raise ApiError(
                415, "unsupported_media_type", f"the image part is {declared[:100]}; send PNG, JPEG or WebP"
            )
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "image":
                continue
            if key in fields or not isinstance(value, str):
                raise _field_error(key, "give this field once, as text")
            fields[key] = value
        if "classes" in fields:
            fields["classes"] = _json_list(fields["classes"])
        options = _validate(SegmentOptions, fields)
        data = await image.read()
    finally:
        await form.close()
    return data, options


def parse_json(data: bytes | str, what: str) -> Any:
    """json.loads, with 400 invalid_json for text that is not JSON or nests too deeply for Python's parser."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ApiError(400, "invalid_json", f"{what} nests JSON too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", f"{what} is not valid JSON") from None


def _json_list(text: str) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise ApiError(400, "invalid_json", "`classes` nests JSON too deeply") from None
    except ValueError:
        raise _field_error("classes", 'must be a JSON array of names, e.g. ["cat", "grass"]') from None


def _validate(model: type[SegmentOptions], data: object) -> Any:
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_input=False)]
        raise RequestValidationError(errors) from None


def _field_error(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])
