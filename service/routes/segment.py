"""POST /segment: admit, read, decode, resolve the text, queue for the model thread, answer.

Admission comes first, before a byte of the body is read, so an overloaded worker refuses at once. Blocking
steps (decoding, Redis, prompt building, answer encoding) run in worker threads; the model thread only
encodes class prompts that no cache tier had (in chunks, between batches) and segments.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import torch
from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool

from lsmseg.prompt_cache.store import EmbeddingStore, TextLookup
from lsmseg.service.answers import json_answer, png_answer
from lsmseg.service.batcher import Job
from lsmseg.service.engine import SegmentJob, SegmentOutput
from lsmseg.service.errors import CLIENT_CLOSED_REQUEST
from lsmseg.service.images import decode_image
from lsmseg.service.metrics import DECODE, ENCODE, QUEUE, TEXT
from lsmseg.service.parsing import read_segment_request
from lsmseg.service.routes.common import error_responses, protected_router
from lsmseg.service.schemas import SegmentOptions, SegmentResponse
from lsmseg.service.state import ServiceState, get_state
from lsmseg.service.vocabularies import ResolvedVocab

router = protected_router("segmentation")

_SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SegmentForm"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/SegmentJsonRequest"}},
        },
    }
}
_VOCAB_HEADERS = {
    "X-LSMSeg-Vocab-Id": {"description": "content id of the class list", "schema": {"type": "string"}},
    "X-LSMSeg-Num-Classes": {"description": "classes in the vocabulary", "schema": {"type": "integer"}},
}


@router.post(
    "/segment",
    operation_id="segment",
    response_model=SegmentResponse,
    response_model_exclude_none=True,
    summary="Segment one image with a class list or a registered vocabulary",
    description="Multipart (`image` file + fields) or JSON (`image` base64). Label value i of the answer "
    "means `classes[i]`. With `Accept: image/png` the answer is the label PNG itself (the overlay when "
    "overlay=true). Refused with 503 before the body is read when the worker's queue is full.",
    openapi_extra=_SEGMENT_BODY,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "JSON; with `Accept: image/png` the label PNG (the overlay when overlay=true)",
            "headers": _VOCAB_HEADERS,
        },
        **error_responses(400, 404, 408, 413, 415, 422, 503),
    },
)
async def segment(request: Request) -> Any:
    state = get_state(request)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with state.batcher.admit() as admission:  # 503 now, before anything is read
        image_bytes, options = await read_segment_request(request)
        top_k = options.top_k or state.settings.top_k
        state.ready_model().engine.segmenter.check_k(top_k)  # UnsupportedK: a 422 (errors.py)
        settings = state.settings
        limits = (settings.max_image_pixels, settings.max_segment_side)
        decoded = await _timed(timings, DECODE, decode_image, image_bytes, *limits)
        admission.arriving()
        vocab, text = await _text(state, options, timings)
        state.metrics.vocab_classes.observe(len(vocab.classes))
        job = admission.submit(SegmentJob(decoded.rgb, text, top_k))
    output = await _wait(state, job, request)
    if output is None:  # the client hung up: nobody is listening
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    timings[QUEUE] = job.queue_seconds
    for stage, seconds in output.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    if _prefers_png(request.headers.get("accept")):
        png = await _timed(timings, ENCODE, png_answer, decoded, output, vocab, options.overlay)
        state.metrics.observe_stages(timings)
        headers = {"X-LSMSeg-Vocab-Id": vocab.vocab_id, "X-LSMSeg-Num-Classes": str(len(vocab.classes))}
        return Response(png, media_type="image/png", headers=headers)
    body = await _timed(timings, ENCODE, json_answer, decoded, output, vocab, options)
    state.metrics.observe_stages(timings)
    body.timings_ms = {stage: round(seconds * 1000, 3) for stage, seconds in timings.items()}
    body.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
    return body


async def _timed(timings: dict[str, float], stage: str, function: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    try:
        return await run_in_threadpool(function, *args)
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


async def _text(
    state: ServiceState, options: SegmentOptions, timings: dict[str, float]
) -> tuple[ResolvedVocab, torch.Tensor]:
    """The classes and their C×P×D embeddings: cache tiers in a worker thread, misses on the model thread
    (encoding.py), then written back in a worker thread."""
    start = time.perf_counter()
    loaded = state.ready_model()
    vocab, lookup = await run_in_threadpool(_lookup, state, loaded.store, options)
    encoded = None
    if lookup.missing:
        deadline = start + state.settings.request_timeout_s
        encoded = await state.text_encoder.encode(loaded.engine.encode_text, lookup.missing, deadline)
    text = await run_in_threadpool(loaded.store.complete, lookup, encoded)
    timings[TEXT] = time.perf_counter() - start
    return vocab, text


def _lookup(
    state: ServiceState, store: EmbeddingStore, options: SegmentOptions
) -> tuple[ResolvedVocab, TextLookup]:
    if options.vocab_id is not None:
        vocab = state.vocabularies.registered(options.vocab_id)
    else:
        assert options.classes is not None
        vocab = state.vocabularies.inline(options.classes, state.text_encoder.check_room)
    return vocab, store.lookup(vocab.prompts.prompts)


async def _wait(
    state: ServiceState, job: Job[SegmentJob, SegmentOutput], request: Request
) -> SegmentOutput | None:
    """The job's result; None when the client disconnected first (the job is then dropped)."""
    disconnected = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait(
            {job.future, disconnected},
            timeout=state.settings.request_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if job.future in done:
            return job.future.result()
        if disconnected in done:
            return None
        raise state.batcher.timed_out()
    finally:
        disconnected.cancel()
        if not job.future.done():
            state.batcher.cancel(job)


async def _client_gone(request: Request) -> None:
    # The body is read already, so the next ASGI message is the disconnect (or never comes).
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _prefers_png(accept: str | None) -> bool:
    """True when Accept ranks image/png above application/json (ties and */* give JSON)."""
    if not accept:
        return False
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    png = quality.get("image/png", quality.get("image/*", 0.0))
    json_q = quality.get("application/json", quality.get("application/*", quality.get("*/*", 0.0)))
    return png > json_q
