"""Typed errors of prompt_cache, shaped so the service can map each family to one HTTP status."""

from __future__ import annotations


class PromptCacheError(Exception):
    """Base class of every error this package raises on purpose."""


class ValidationError(PromptCacheError, ValueError):
    """Bad client input. The message is written for the client (the service answers 422 with it)."""


class NameConflictError(ValidationError):
    """A vocabulary name that already belongs to a different class list."""


class NotFoundError(PromptCacheError, LookupError):
    """An unknown vocabulary id or name (the service answers 404)."""


class BankError(PromptCacheError):
    """A packaged bank file is malformed: a data bug to fix in the repository, not client input."""


class RedisUnavailable(PromptCacheError):
    """Redis could not serve an operation (down, timed out, circuit open); callers fall back to memory."""

    def __init__(self, message: str, *, attempted: bool) -> None:
        super().__init__(message)
        self.attempted = attempted  # False when the circuit breaker refused without touching the network
