"""Redis key layout (docs/prompts.md, "Redis keys"). Every key lives under one versioned prefix; user text
is always hashed."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from lsmseg.prompt_cache.modes import DEFAULT_PROMPT_MODE
from lsmseg.prompt_cache.names import normalise_name

KEY_PREFIX = "lsmseg:v1:"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompts_digest(prompts: Sequence[str]) -> str:
    """Hash of one class's prompt list. Length prefixes keep prompt boundaries unambiguous (and, on the
    hot path, cost a third of what JSON does)."""
    return sha256_hex("".join([f"{len(prompt)}:{prompt}" for prompt in prompts]))


def embedding_key(
    model_fingerprint: str, prompts: Sequence[str], prompt_mode: str = DEFAULT_PROMPT_MODE
) -> str:
    """The key of one class's embedding. Modes other than attributes get their own segment: an ensemble's
    averaged vector and the 5-prompt tensor of the same sentences are different values. (Attributes keys keep
    the layout they had before modes existed, so caches written then stay valid.)"""
    mode = "" if prompt_mode == DEFAULT_PROMPT_MODE else f"{prompt_mode}:"
    return f"{KEY_PREFIX}emb:{model_fingerprint}:{mode}{prompts_digest(prompts)}"


def description_key(prompt_version: str, class_name: str) -> str:
    return f"{KEY_PREFIX}desc:{prompt_version}:{sha256_hex(normalise_name(class_name))}"


def vocab_key(vocab_id: str) -> str:
    return f"{KEY_PREFIX}vocab:{vocab_id}"


def vocab_name_key(name: str) -> str:
    return f"{KEY_PREFIX}vocabname:{name}"


def vocab_index_key() -> str:
    """Sorted set of every vocab_id, scored by creation time: GET /vocab pages through it."""
    return f"{KEY_PREFIX}vocabindex"


def registry_epoch_key() -> str:
    """A random token the first registry writes into an empty Redis; a new token means Redis lost its data."""
    return f"{KEY_PREFIX}vocabepoch"
