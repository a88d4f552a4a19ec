"""Text side of LSMSeg: attribute prompts per class and their cached text embeddings. No nn.Module here."""

from lsmseg.prompt_cache.errors import (
    BankError,
    NameConflictError,
    NotFoundError,
    PromptCacheError,
    RedisUnavailable,
    ValidationError,
)
from lsmseg.prompt_cache.keys import KEY_PREFIX, description_key, embedding_key, vocab_key, vocab_name_key
from lsmseg.prompt_cache.llm import (
    LLMAnswerError,
    LLMClient,
    LLMError,
    LLMNotConfiguredError,
    LLMRejectedError,
    LLMUnavailableError,
)
from lsmseg.prompt_cache.modes import (
    CATSEG_TEMPLATE,
    PROMPT_MODES,
    catseg_prompt,
    class_encoder,
    ensemble_encoder,
    recorded_prompt_mode,
    resolve_prompt_mode,
)
from lsmseg.prompt_cache.names import normalise_name, validate_classes
from lsmseg.prompt_cache.prompt_bank import ATTRIBUTES, PROMPT_VERSION, Bank
from lsmseg.prompt_cache.prompts import SOURCES, TEMPLATES, PromptBuilder, PromptSet
from lsmseg.prompt_cache.redis_link import RedisLink
from lsmseg.prompt_cache.store import EmbeddingStore
from lsmseg.prompt_cache.tokens import CONTEXT_LENGTH, token_count, truncate
from lsmseg.prompt_cache.vocab import VocabRegistry, Vocabulary, vocab_id_for

__all__ = [
    "ATTRIBUTES",
    "CATSEG_TEMPLATE",
    "CONTEXT_LENGTH",
    "KEY_PREFIX",
    "PROMPT_MODES",
    "PROMPT_VERSION",
    "SOURCES",
    "TEMPLATES",
    "Bank",
    "BankError",
    "EmbeddingStore",
    "LLMAnswerError",
    "LLMClient",
    "LLMError",
    "LLMNotConfiguredError",
    "LLMRejectedError",
    "LLMUnavailableError",
    "NameConflictError",
    "NotFoundError",
    "PromptBuilder",
    "PromptCacheError",
    "PromptSet",
    "RedisLink",
    "RedisUnavailable",
    "ValidationError",
    "VocabRegistry",
    "Vocabulary",
    "catseg_prompt",
    "class_encoder",
    "description_key",
    "embedding_key",
    "ensemble_encoder",
    "normalise_name",
    "recorded_prompt_mode",
    "resolve_prompt_mode",
    "token_count",
    "truncate",
    "validate_classes",
    "vocab_id_for",
    "vocab_key",
    "vocab_name_key",
]
