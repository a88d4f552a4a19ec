"""A small typed client for the service (httpx). Needs only numpy and Pillow, not torch.

    from lsmseg.service.client import LSMSegClient

    with LSMSegClient("http://127.0.0.1:8000") as client:
        result = client.segment("photo.jpg", classes=["cat", "grass", "sky"])
        result.label_map          # H×W int array, value i = result.classes[i]
        result.mask("cat")        # H×W bool
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from PIL import Image

ImageInput = bytes | str | Path | Image.Image | np.ndarray
Output = Literal["label_png", "rle", "both"]


class LSMSegError(Exception):
    """An error answer of the service: HTTP status, the stable `code` and the message."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, from Retry-After on 503


@dataclass
class Vocab:
    vocab_id: str
    name: str | None
    classes: list[str]
    num_classes: int
    prompt_version: str
    created: float
    prompt_sources: dict[str, int]


@dataclass
class SegmentInfo:
    class_name: str
    index: int
    area: int
    score: float
    rle: dict[str, Any] | None = None  # COCO RLE: {"size": [h, w], "counts": str}


@dataclass
class SegmentResult:
    vocab_id: str
    width: int
    height: int
    classes: list[str]
    segments: list[SegmentInfo]
    timings_ms: dict[str, float]
    label_map: np.ndarray | None = None  # H×W int64 class indices (when output has label_png)
    overlay_png: bytes | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def mask(self, class_name: str) -> np.ndarray:
        """H×W bool mask of one class, from the label map (or from its RLE when only RLE was asked)."""
        index = self.classes.index(class_name)
        if self.label_map is not None:
            return self.label_map == index
        for segment in self.segments:
            if segment.index == index and segment.rle is not None:
                from pycocotools import mask as coco_mask  # only RLE users need it

                rle = {"size": segment.rle["size"], "counts": segment.rle["counts"].encode("ascii")}
                return coco_mask.decode(rle).astype(bool)
        return np.zeros((self.height, self.width), dtype=bool)


class LSMSegClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    # Segmentation --------------------------------------------------------------------------------------
    def segment(
        self,
        image: ImageInput,
        classes: Sequence[str] | None = None,
        vocab_id: str | None = None,
        output: Output = "label_png",
        top_k: int | None = None,
        overlay: bool = False,
    ) -> SegmentResult:
        fields = _fields(classes, vocab_id, output, top_k, overlay)
        response = self._http.post("/segment", files={"image": _image_file(image)}, data=fields)
        body = _json(response)
        label_map = None
        if "label_map" in body:
            label_map = read_label_png(_b64decode(body["label_map"]["data"]))
        overlay_png = _b64decode(body["overlay"]["data"]) if "overlay" in body else None
        return SegmentResult(
            vocab_id=body["vocab_id"],
            width=body["width"],
            height=body["height"],
            classes=body["classes"],
            segments=[
                SegmentInfo(s["class"], s["index"], s["area"], s["score"], s.get("rle"))
                for s in body["segments"]
            ],
            timings_ms=body["timings_ms"],
            label_map=label_map,
            overlay_png=overlay_png,
            raw=body,
        )

    def segment_png(
        self,
        image: ImageInput,
        classes: Sequence[str] | None = None,
        vocab_id: str | None = None,
        overlay: bool = False,
    ) -> bytes:
        """The label PNG itself (`Accept: image/png`), or the colour overlay with overlay=True."""
        fields = _fields(classes, vocab_id, "label_png", None, overlay)
        response = self._http.post(
            "/segment", files={"image": _image_file(image)}, data=fields, headers={"Accept": "image/png"}
        )
        _raise_for_error(response)
        return response.content

    # Vocabularies --------------------------------------------------------------------------------------
    def register_vocab(
        self,
        classes: Sequence[str],
        name: str | None = None,
        descriptions: Mapping[str, Sequence[str]] | None = None,
    ) -> Vocab:
        payload: dict[str, Any] = {"classes": list(classes)}
        if name is not None:
            payload["name"] = name
        if descriptions is not None:
            payload["descriptions"] = {key: list(value) for key, value in descriptions.items()}
        return Vocab(**_json(self._http.post("/vocab", json=payload)))

    def get_vocab(self, id_or_name: str) -> Vocab:
        return Vocab(**_json(self._http.get(f"/vocab/{id_or_name}")))

    def list_vocabs(self, page_size: int = 1000) -> list[dict[str, Any]]:
        """Every vocabulary (built-in ones first), following GET /vocab's pages."""
        vocabularies: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = _json(self._http.get("/vocab", params={"offset": offset, "limit": page_size}))
            vocabularies += page["vocabularies"]
            offset = page["next_offset"]
        return vocabularies

    def delete_vocab(self, id_or_name: str) -> None:
        _raise_for_error(self._http.delete(f"/vocab/{id_or_name}"))

    # Operations ----------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._http.get("/healthz").json()

    def readiness(self) -> dict[str, Any]:
        """The /readyz body, whether ready (200) or not (503)."""
        return self._http.get("/readyz").json()

    def metrics(self) -> str:
        response = self._http.get("/metrics")
        _raise_for_error(response)
        return response.text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LSMSegClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_label_png(data: bytes) -> np.ndarray:
    """H×W int64 class indices from a label PNG (8-bit palette or 16-bit gray)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int64)


def _fields(
    classes: Sequence[str] | None, vocab_id: str | None, output: str, top_k: int | None, overlay: bool
) -> dict[str, str]:
    fields = {"output": output, "overlay": "true" if overlay else "false"}
    if classes is not None:
        fields["classes"] = json.dumps(list(classes))
    if vocab_id is not None:
        fields["vocab_id"] = vocab_id
    if top_k is not None:
        fields["top_k"] = str(top_k)
    return fields


def _image_file(image: ImageInput) -> tuple[str, bytes, str]:
    if isinstance(image, bytes):
        return "image", image, "application/octet-stream"
    if isinstance(image, str | Path):
        path = Path(image)
        return path.name, path.read_bytes(), "application/octet-stream"
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "image.png", buffer.getvalue(), "image/png"


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text)


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:200]
    retry_after = response.headers.get("Retry-After")
    raise LSMSegError(response.status_code, code, message, float(retry_after) if retry_after else None)


def _json(response: httpx.Response) -> Any:
    _raise_for_error(response)
    return response.json()
