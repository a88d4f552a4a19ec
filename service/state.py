"""Everything one app instance holds; the model itself arrives from startup.py, on the model thread."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from lsmseg.prompt_cache import Bank, RedisLink, VocabRegistry
from lsmseg.service.batcher import Batcher, RunBatch
from lsmseg.service.encoding import TextEncoder
from lsmseg.service.engine import SegmentJob, SegmentOutput
from lsmseg.service.exceptions import NotReady
from lsmseg.service.loader import ModelPlan
from lsmseg.service.metrics import Metrics
from lsmseg.service.settings import Settings
from lsmseg.service.startup import LoadedModel, start_model
from lsmseg.service.vocabularies import Vocabularies


@dataclass
class ServiceState:
    settings: Settings
    plan: ModelPlan
    metrics: Metrics = field(default_factory=Metrics)
    bank: Bank = field(init=False)
    link: RedisLink = field(init=False)
    vocabularies: Vocabularies = field(init=False)
    batcher: Batcher[SegmentJob, SegmentOutput] = field(init=False)
    text_encoder: TextEncoder = field(init=False)
    loaded: LoadedModel | None = None  # set on the model thread once start-up has finished

    def __post_init__(self) -> None:
        settings = self.settings
        self.bank = Bank()
        # One link, so the embedding store and the registry share one circuit breaker.
        self.link = RedisLink(settings.redis_url)
        registry = VocabRegistry(
            self.link,
            self.bank.prompt_version,
            max_classes=settings.max_classes,
            max_class_chars=settings.max_class_name_length,
            local_items=settings.vocab_memory_items,
        )
        self.vocabularies = Vocabularies(
            registry, self.bank, settings.max_classes, settings.max_class_name_length
        )
        self.batcher = Batcher(
            settings.max_batch,
            settings.max_wait_ms / 1000,
            settings.queue_size,
            self.metrics,
            cost=lambda job: job.pixels,  # smaller images overtake a large one's label map
        )
        self.text_encoder = TextEncoder(
            self.batcher, self.metrics, settings.text_chunk_classes, settings.text_backlog_classes
        )

    def start(self) -> None:
        self.batcher.start(self._start_model)

    def stop(self) -> None:
        self.batcher.stop()
        self.link.close()

    def _start_model(self) -> RunBatch[SegmentJob, SegmentOutput]:
        """On the model thread: load and wire the model; its batch function is what the thread runs."""
        loaded = start_model(self.plan, self.settings, self.bank, self.link, self.metrics)
        self.vocabularies.builder = loaded.builder
        self.loaded = loaded
        status = loaded.status
        self.metrics.model_info.labels(
            status.name, status.source, status.device, status.backend, ",".join(status.providers)
        ).set(1)
        return loaded.engine.run

    def ready_model(self) -> LoadedModel:
        """The loaded model; NotReady before start-up has finished."""
        if self.loaded is None:
            raise NotReady()
        return self.loaded


def get_state(request: Request) -> ServiceState:
    return request.app.state.service
