"""create_app(settings) -> FastAPI: state, lifespan (model thread), middleware, error format, OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from PIL import Image

from lsmseg.service.errors import install_error_handlers
from lsmseg.service.limits import RequestGuardMiddleware
from lsmseg.service.loader import plan_model
from lsmseg.service.metrics import RequestMetricsMiddleware
from lsmseg.service.routes import ROUTERS, STATIC_DIR, TAGS
from lsmseg.service.schemas import SegmentForm, SegmentJsonRequest
from lsmseg.service.settings import Settings
from lsmseg.service.state import ServiceState

API_VERSION = "1.0.0"
_DESCRIPTION = """Open-vocabulary semantic segmentation (LSMSeg). Send an image and class names (or the id
of a registered vocabulary); get back a label map whose value i means `classes[i]`, as a PNG and/or COCO RLE.
Every error answers `{"error": {"code", "message"}}`; 503 answers carry Retry-After. When the server sets
LSMSEG_API_KEY, the segmentation and vocabulary routes need `Authorization: Bearer <key>`."""
_LICENSE = {"name": "Apache-2.0", "identifier": "Apache-2.0"}
_SERVERS = [{"url": "http://127.0.0.1:8000", "description": "a worker here (lsmseg-serve's default address)"}]


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. Raises ModelConfigError at once when the configured model files are missing;
    the model itself loads on the model thread after start-up (see /readyz)."""
    settings = settings or Settings()
    state = ServiceState(settings, plan_model(settings))
    # Pillow's own decompression-bomb guard, aligned with ours (ours runs first and answers 413).
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="LSMSeg segmentation service",
        version=API_VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_tags=TAGS,
        license_info=_LICENSE,
        servers=_SERVERS,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(
        RequestGuardMiddleware,
        max_bytes=settings.max_request_bytes,
        body_timeout_s=settings.body_timeout_s,
        hosts=settings.served_hosts(),
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)  # outermost: times everything
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")  # the page at GET /
    _document_segment_bodies(app)
    return app


def _document_segment_bodies(app: FastAPI) -> None:
    """POST /segment parses its two body types by hand; put their schemas into the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
                license_info=app.license_info,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (SegmentForm, SegmentJsonRequest):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
