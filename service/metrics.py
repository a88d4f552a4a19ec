"""Prometheus metrics (docs/deployment.md#metrics). One registry per app; every label has a small, fixed set
of values."""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lsmseg.model.timing import MODEL_STAGES

# A request's own stages; the model's (clip, sam, cfm, refine, onnx, postprocess) are in model/timing.py.
DECODE = "decode"  # image bytes -> pixels
QUEUE = "queue"  # waiting for the model thread
TEXT = "text"  # class names -> text embeddings (cache tiers, and encoding the misses)
ENCODE = "encode"  # the answer: label PNG, RLE, overlay
STAGES = (DECODE, QUEUE, TEXT, *MODEL_STAGES, ENCODE)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
_CLASS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096)
UNMATCHED_ROUTE = "unmatched"  # 404 scans must not create one series per probed path


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.request_duration = Histogram(
            "lsmseg_request_duration_seconds",
            "HTTP request latency by route template and status code",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "lsmseg_stage_duration_seconds",
            "Time per processing stage: decode, queue, text, encode per request; model stages per batch",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "lsmseg_batch_size", "Images per model call", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "lsmseg_queue_depth", "Requests waiting for the model thread", registry=self.registry
        )
        self.embedding_cache = Counter(
            "lsmseg_embedding_cache",
            "Text-embedding lookups per cache tier (memory, redis, encode) and result",
            ["tier", "result"],
            registry=self.registry,
        )
        self.vocab_classes = Histogram(
            "lsmseg_vocab_classes", "Classes per segmentation request", buckets=_CLASS_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "lsmseg_rejected_requests",
            "Requests answered 503, by reason (queue_full, not_ready, timeout, text_backlog)",
            ["reason"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "lsmseg_model_info",
            "The loaded model (value 1); providers: onnxruntime's, comma-separated (empty for torch)",
            ["name", "source", "device", "backend", "providers"],
            registry=self.registry,
        )
        for stage in STAGES:  # every stage series exists from the first scrape on
            self.stage_duration.labels(stage)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            if stage in STAGES:
                self.stage_duration.labels(stage).observe(value)

    def count_cache(self, tier: str, result: str, n: int) -> None:
        self.embedding_cache.labels(tier, result).inc(n)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Times every HTTP request and labels it with the matched route's template, never the raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees when the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            self.metrics.request_duration.labels(template, str(status)).observe(time.perf_counter() - start)
