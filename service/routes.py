"""HTTP endpoints (design §4). Blocking work runs in worker threads; model work on the model thread."""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from prompt_cache import Vocabulary
from service.batcher import Job
from service.engine import SegmentJob, SegmentOutput
from service.errors import CLIENT_CLOSED_REQUEST, ApiError
from service.images import DecodedImage, decode_image
from service.masks import class_rle, label_png, overlay_png, palette_hex
from service.parsing import read_segment_request
from service.schemas import (
    EncodedImage,
    ErrorBody,
    Health,
    ModelStatus,
    PromptSources,
    Readiness,
    Rle,
    Segment,
    SegmentOptions,
    SegmentResponse,
    VocabCreate,
    VocabList,
    VocabOut,
    VocabSummary,
)
from service.state import ServiceState, get_state
from service.vocabularies import ResolvedVocab

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The try-it page loads only its own script and style and talks only to this server.
_PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_bearer = HTTPBearer(auto_error=False, description="needed only when the server sets LSMSEG_API_KEY")


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = get_state(request).settings.api_key
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError(
            401, "unauthorized", "missing or wrong API key; send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key)], responses=_error_responses(401))


# Segmentation --------------------------------------------------------------------------------------------
_SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SegmentForm"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/SegmentJsonRequest"}},
        },
    }
}


@protected.post(
    "/segment",
    response_model=SegmentResponse,
    response_model_exclude_none=True,
    summary="Segment one image with a class list or a registered vocabulary",
    openapi_extra=_SEGMENT_BODY,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "JSON; with `Accept: image/png` the label PNG (the overlay when overlay=true)",
        },
        **_error_responses(400, 404, 413, 415, 422, 503),
    },
)
async def segment(request: Request) -> Any:
    state = get_state(request)
    started = time.perf_counter()
    if state.batcher.state != "ready":
        raise state.batcher.not_ready_error()
    timings: dict[str, float] = {}
    with state.batcher.arriving():
        image_bytes, options = await read_segment_request(request)
        decoded, vocab = await run_in_threadpool(_prepare, state, image_bytes, options, timings)
        state.metrics.vocab_classes.observe(len(vocab.classes))
        top_k = options.top_k or state.settings.top_k
        state.check_top_k(top_k)
        job = state.batcher.submit(SegmentJob(decoded.rgb, vocab.vocab_id, vocab.prompts.prompts, top_k))
    output = await _wait(state, job, request)
    if output is None:  # the client hung up: nobody is listening
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    timings["queue"] = job.queue_seconds
    for stage, seconds in output.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    if _prefers_png(request.headers.get("accept")):
        png = await _timed(timings, "encode", _png_answer, decoded, output, vocab, options.overlay)
        state.metrics.observe_stages(timings)
        headers = {"X-LSMSeg-Vocab-Id": vocab.vocab_id, "X-LSMSeg-Num-Classes": str(len(vocab.classes))}
        return Response(png, media_type="image/png", headers=headers)
    body = await _timed(timings, "encode", _json_answer, decoded, output, vocab, options)
    state.metrics.observe_stages(timings)
    body.timings_ms = {stage: round(seconds * 1000, 3) for stage, seconds in timings.items()}
    body.timings_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
    return body


async def _timed(timings: dict[str, float], stage: str, function: Any, *args: Any) -> Any:
    start = time.perf_counter()
    try:
        return await run_in_threadpool(function, *args)
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _prepare(
    state: ServiceState, image_bytes: bytes, options: SegmentOptions, timings: dict[str, float]
) -> tuple[DecodedImage, ResolvedVocab]:
    """Decode the image and resolve the classes, in one worker-thread hop."""
    start = time.perf_counter()
    decoded = decode_image(image_bytes, state.settings.max_image_pixels)
    decoded_at = time.perf_counter()
    timings["decode"] = decoded_at - start
    if options.vocab_id is not None:
        vocab = state.vocabularies.registered(options.vocab_id)
    else:
        assert options.classes is not None
        vocab = state.vocabularies.inline(options.classes)
    timings["text"] = time.perf_counter() - decoded_at
    return decoded, vocab


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


def _png_answer(decoded: DecodedImage, output: SegmentOutput, vocab: ResolvedVocab, overlay: bool) -> bytes:
    label_map = output.segmentation.label_map
    if overlay:
        return overlay_png(decoded.rgb, label_map)
    return label_png(label_map, len(vocab.classes))


def _json_answer(
    decoded: DecodedImage, output: SegmentOutput, vocab: ResolvedVocab, options: SegmentOptions
) -> SegmentResponse:
    segmentation = output.segmentation
    label_map = segmentation.label_map
    with_rle = options.output in ("rle", "both")
    colours = palette_hex(len(vocab.classes)) if options.overlay else None
    segments = [
        Segment(
            class_name=vocab.classes[index],
            index=int(index),
            area=int(segmentation.areas[index]),
            score=round(float(segmentation.scores[index]), 4),
            colour=colours[index] if colours is not None else None,
            rle=Rle(**class_rle(label_map, int(index))) if with_rle else None,
        )
        for index in np.flatnonzero(segmentation.areas)
    ]
    png = label_png(label_map, len(vocab.classes)) if options.output in ("label_png", "both") else None
    return SegmentResponse(
        vocab_id=vocab.vocab_id,
        width=decoded.width,
        height=decoded.height,
        classes=vocab.classes,
        label_map=EncodedImage(data=_b64(png)) if png is not None else None,
        overlay=EncodedImage(data=_b64(overlay_png(decoded.rgb, label_map))) if options.overlay else None,
        segments=segments,
        timings_ms={},
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Vocabularies ------------------------------------------------------------------------------------------
def _vocab_out(vocab: Vocabulary, sources: dict[str, int]) -> VocabOut:
    return VocabOut(
        vocab_id=vocab.vocab_id,
        name=vocab.name,
        classes=list(vocab.classes),
        num_classes=len(vocab.classes),
        prompt_version=vocab.prompt_version,
        created=vocab.created,
        prompt_sources=PromptSources(**sources),
    )


@protected.post(
    "/vocab",
    status_code=201,
    response_model=VocabOut,
    summary="Register a named or anonymous class list (idempotent: the id is a content hash)",
    responses=_error_responses(400, 409, 413, 415, 422, 503),
)
async def create_vocab(request: Request, body: VocabCreate) -> VocabOut:
    state = get_state(request)
    vocab, prompts = await run_in_threadpool(
        state.vocabularies.register, body.classes, body.name, body.descriptions
    )
    return _vocab_out(vocab, prompts.counts)


@protected.get("/vocab", response_model=VocabList, summary="Built-in vocabularies, then registered ones")
async def list_vocabs(request: Request) -> VocabList:
    vocabularies = get_state(request).vocabularies
    vocabs = await run_in_threadpool(vocabularies.all)
    return VocabList(
        vocabularies=[
            VocabSummary(
                vocab_id=vocab.vocab_id,
                name=vocab.name,
                num_classes=len(vocab.classes),
                created=vocab.created,
                builtin=vocab is vocabularies.builtins.get(vocab.name or ""),
            )
            for vocab in vocabs
        ]
    )


@protected.get(
    "/vocab/{id_or_name}", response_model=VocabOut, summary="One vocabulary by id or name",
    responses=_error_responses(404, 422, 503),
)
async def get_vocab(request: Request, id_or_name: str) -> VocabOut:
    state = get_state(request)
    vocab, prompts = await run_in_threadpool(state.vocabularies.describe, id_or_name)
    return _vocab_out(vocab, prompts.counts)


@protected.delete(
    "/vocab/{id_or_name}", status_code=204, summary="Forget a vocabulary (cached embeddings stay)",
    responses=_error_responses(404, 409, 422),
)
async def delete_vocab(request: Request, id_or_name: str) -> Response:
    await run_in_threadpool(get_state(request).vocabularies.delete, id_or_name)
    return Response(status_code=204)


# The page -----------------------------------------------------------------------------------------------
@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """A page for trying the service in a browser (service/static/); its API calls carry the key, not it."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _PAGE_POLICY})


# Operations --------------------------------------------------------------------------------------------
def _model_status(state: ServiceState) -> ModelStatus | None:
    info = state.model_info
    return ModelStatus(**info.as_dict()) if info is not None else None


@router.get("/healthz", response_model=Health, summary="Liveness: the process runs, the model did not fail")
async def healthz(request: Request) -> JSONResponse:
    state = get_state(request)
    failed = state.batcher.state == "failed"
    body = Health(
        status="failed" if failed else "ok", model_state=state.batcher.state, model=_model_status(state)
    )
    return JSONResponse(body.model_dump(), status_code=503 if failed else 200)


@router.get(
    "/readyz", response_model=Readiness, summary="Readiness: model loaded and warm (Redis state is reported)",
    responses={503: {"model": Readiness}},
)
async def readyz(request: Request) -> JSONResponse:
    state = get_state(request)
    redis_state = await run_in_threadpool(state.link.state)
    batcher = state.batcher
    body = Readiness(
        status=batcher.state,  # type: ignore[arg-type]
        model=_model_status(state),
        redis=redis_state,  # type: ignore[arg-type]
        queue_depth=batcher.depth,
        error=batcher.error,
    )
    ready = batcher.state == "ready"
    headers = {} if ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    payload, content_type = get_state(request).metrics.exposition()
    return Response(payload, media_type=content_type)
