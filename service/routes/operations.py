"""Probes and metrics (open to anyone, also when an API key is set) and the try-it page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from lsmseg.service.errors import retry_after
from lsmseg.service.routes.common import OPEN, RETRY_AFTER, error_responses
from lsmseg.service.schemas import Health, ModelStatus, Readiness
from lsmseg.service.state import ServiceState, get_state

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The try-it page loads only its own script and style and talks only to this server.
_PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)

router = APIRouter(tags=["operations"])


def _model_status(state: ServiceState) -> ModelStatus | None:
    return state.loaded.status if state.loaded is not None else None


@router.get(
    "/healthz",
    operation_id="getHealth",
    response_model=Health,
    summary="Liveness: the process runs and the model did not fail to load",
    openapi_extra=OPEN,
    responses={
        **error_responses(400),
        503: {"model": Health, "description": "The model failed to load (see `model_state`)"},
    },
)
async def healthz(request: Request) -> JSONResponse:
    state = get_state(request)
    failed = state.batcher.state == "failed"
    body = Health(
        status="failed" if failed else "ok", model_state=state.batcher.state, model=_model_status(state)
    )
    return JSONResponse(body.model_dump(), status_code=503 if failed else 200)


@router.get(
    "/readyz",
    operation_id="getReadiness",
    response_model=Readiness,
    summary="Readiness: model loaded and warm (Redis state is reported)",
    openapi_extra=OPEN,
    responses={
        **error_responses(400),
        503: {"model": Readiness, "description": "Loading, failed or stopping", "headers": RETRY_AFTER},
    },
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
    # The wait a refused request would be told: a few seconds while loading, longer once loading failed.
    headers = {} if ready else retry_after(batcher.not_ready_error().retry_after_s)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=headers)


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    openapi_extra=OPEN,
    responses={
        200: {
            "description": "The exposition text (`text/plain; version=0.0.4`)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(400),
    },
)
async def metrics(request: Request) -> Response:
    payload, content_type = get_state(request).metrics.exposition()
    return Response(payload, media_type=content_type)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """A page for trying the service in a browser (service/static/); its API calls carry the key, not it."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _PAGE_POLICY})
