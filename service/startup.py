"""The start-up composition, on the model thread: the model, its text side and the engine, wired once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lsmseg.prompt_cache import Bank, EmbeddingStore, LLMClient, PromptBuilder, RedisLink
from lsmseg.service.backends import build_backend
from lsmseg.service.engine import Engine
from lsmseg.service.loader import ModelPlan, load_model
from lsmseg.service.metrics import Metrics
from lsmseg.service.schemas import ModelStatus
from lsmseg.service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """What serving needs once the model is known."""

    engine: Engine  # the model and its backend; the model thread's only
    store: EmbeddingStore  # text embeddings under this model's text fingerprint
    builder: PromptBuilder  # class names -> this model's P prompts (and prompt mode)
    status: ModelStatus  # what /healthz and /readyz report


def start_model(
    plan: ModelPlan, settings: Settings, bank: Bank, link: RedisLink, metrics: Metrics
) -> LoadedModel:
    """Load the model, wire the embedding store, prompt builder and backend to it, and warm every stage up."""
    model, status = load_model(plan, settings)
    if status.prompt_version and status.prompt_version != bank.prompt_version:
        logger.warning(
            "the checkpoint was trained with prompt version %r; this bank is %r",
            status.prompt_version, bank.prompt_version,
        )
    store = EmbeddingStore(
        link,
        model.text_fingerprint(),
        bank.prompt_version,
        ttl_s=settings.embedding_ttl_s,
        device=status.device,
        on_count=metrics.count_cache,
        prompt_mode=status.prompt_mode,
    )
    builder = PromptBuilder(
        bank,
        _llm_client(settings),
        status.prompts_per_class,
        mode=status.prompt_mode,
        store=store,
        max_classes=settings.max_classes,
    )
    backend = build_backend(model, plan, settings, status.device)
    status = status.model_copy(update={"providers": list(backend.providers)})
    engine = Engine(model, backend, status.prompt_mode)
    engine.warm_up()
    builder.build(["wall"])  # loads the tokenizer now rather than in the first request
    return LoadedModel(engine, store, builder, status)


def _llm_client(settings: Settings) -> LLMClient | None:
    if settings.llm_url is None or settings.llm_model is None:
        return None
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return LLMClient(settings.llm_url, settings.llm_model, key)
