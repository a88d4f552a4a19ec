"""What the service's parts raise when they refuse work. No HTTP here: errors.py maps each one to a status.

Overloaded errors carry how long a client should wait before trying again (the HTTP layer sends it as
Retry-After), as prompt_cache's errors carry what went wrong with a vocabulary.
"""

from __future__ import annotations

NOT_READY_RETRY_S = 5.0  # the model is loading: about how long one more try should wait
MODEL_FAILED_RETRY_S = 60.0  # it failed to load: only an operator fixes that


class Unavailable(Exception):
    """The worker cannot take this request now; `retry_after_s` says when another try makes sense."""

    code = "unavailable"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class NotReady(Unavailable):
    code = "not_ready"

    def __init__(self) -> None:
        super().__init__("the model is still loading; retry shortly", NOT_READY_RETRY_S)


class ModelFailed(Unavailable):
    code = "model_failed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the model failed to load: {reason}", MODEL_FAILED_RETRY_S)


class QueueFull(Unavailable):
    code = "queue_full"


class EncodingBacklogFull(Unavailable):
    """Too many new class names are waiting to be encoded already (LSMSEG_TEXT_BACKLOG_CLASSES)."""

    code = "text_backlog_full"


class TimedOut(Unavailable):
    code = "timeout"


class ShuttingDown(Unavailable):
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("the server is shutting down", NOT_READY_RETRY_S)


class BuiltinVocabulary(Exception):
    """A change to one of the built-in vocabularies (their names are reserved; they cannot be deleted)."""
