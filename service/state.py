"""Everything one app instance holds, and the start-up that runs on the model thread."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from fastapi import Request

from prompt_cache import Bank, EmbeddingStore, LLMClient, PromptBuilder, RedisLink, VocabRegistry
from service.backends import build_backend
from service.batcher import Batcher
from service.encoding import TextEncoder
from service.engine import Engine, SegmentJob, SegmentOutput
from service.errors import ApiError
from service.loader import ModelInfo, ModelPlan, load_model
from service.metrics import Metrics
from service.settings import Settings
from service.vocabularies import Vocabularies

logger = logging.getLogger(__name__)


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
    model_info: ModelInfo | None = None
    engine: Engine | None = None
    store: EmbeddingStore | None = None  # text embeddings; set with the engine once the model is known

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
            settings.max_batch, settings.max_wait_ms / 1000, settings.queue_size, self.metrics
        )
        self.text_encoder = TextEncoder(
            self.batcher, self.metrics, settings.text_chunk_classes, settings.text_backlog_classes
        )

    def start(self) -> None:
        self.batcher.start(self._start_model)

    def stop(self) -> None:
        self.batcher.stop()
        self.link.close()

    def _start_model(self):
        """On the model thread: load, wire the text side to the model, warm up. Returns the batch function."""
        settings = self.settings
        model, info = load_model(self.plan, settings)
        if info.prompt_version and info.prompt_version != self.bank.prompt_version:
            logger.warning(
                "the checkpoint was trained with prompt version %r; this bank is %r",
                info.prompt_version, self.bank.prompt_version,
            )
        store = EmbeddingStore(
            self.link,
            model.text_fingerprint(),
            self.bank.prompt_version,
            ttl_s=settings.embedding_ttl_s,
            device=info.device,
            on_count=self.metrics.count_cache,
            prompt_mode=info.prompt_mode,
        )
        llm = None
        if settings.llm_url is not None and settings.llm_model is not None:
            key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
            llm = LLMClient(settings.llm_url, settings.llm_model, key)
        builder = PromptBuilder(
            self.bank,
            llm,
            info.prompts_per_class,
            mode=info.prompt_mode,
            store=store,
            max_classes=settings.max_classes,
        )
        backend = build_backend(model, self.plan, settings, info.device)
        info = replace(info, providers=backend.providers)
        engine = Engine(model, backend, info.prompt_mode)
        engine.warm_up()
        builder.build(["wall"])  # loads the tokenizer now rather than in the first request
        self.vocabularies.builder = builder
        self.store = store
        self.engine = engine
        self.model_info = info
        self.metrics.model_info.labels(
            info.name, info.source, info.device, info.backend, ",".join(info.providers)
        ).set(1)
        return engine.run

    def check_top_k(self, top_k: int | None) -> None:
        """422 for a top_k the backend cannot run: the ONNX graph's CFM k is fixed at export."""
        fixed = self.engine.backend.fixed_k if self.engine is not None else None
        if top_k is not None and fixed is not None and top_k != fixed:
            raise ApiError(
                422,
                "unsupported_top_k",
                f"this worker runs the ONNX backend, whose graph keeps k={fixed} classes: "
                f"omit top_k or send {fixed} (other values need a worker with LSMSEG_BACKEND=torch)",
            )


def get_state(request: Request) -> ServiceState:
    return request.app.state.service
