"""OpenAI-compatible chat-completions client that writes attribute descriptions for classes the bank lacks.

The request follows the paper (§3.3): "Describe a {class name} with respect to a given {attribute}. The
description should not exceed 77 tokens, consistent with the CLIP tokenizer limit." for the winning
attributes size, shape, texture and colour, plus one comprehensive sentence combining them. All five come
back in one JSON object, so a class costs one request.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import time
from collections.abc import Mapping

import httpx

from lsmseg.prompt_cache.errors import PromptCacheError
from lsmseg.prompt_cache.names import first_synonym, normalise_name
from lsmseg.prompt_cache.prompt_bank import ATTRIBUTES
from lsmseg.prompt_cache.tokens import CONTEXT_LENGTH, token_count

_KEY_ALIASES = {"color": "colour", "comprehensive": "combined"}
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class LLMError(PromptCacheError):
    """Base class of LLM failures; PromptBuilder turns any of them into a template fallback."""


class LLMNotConfiguredError(LLMError):
    """The LSMSEG_LLM_* settings are missing or incomplete."""


class LLMUnavailableError(LLMError):
    """Network errors, timeouts, HTTP 429 or 5xx that outlasted the retries: asking again now won't help."""


class LLMRejectedError(LLMError):
    """HTTP 4xx other than 429 (bad key, unknown model, bad request): retrying cannot help."""


class LLMAnswerError(LLMError):
    """The server answered, but not with usable descriptions (no JSON, a missing attribute, too long...)."""


class LLMClient:
    """Synchronous, thread-safe client; one POST per class with bounded, backed-off retries."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_retry_after_s: float = 30.0,
    ) -> None:
        base = url.rstrip("/")
        # Accept both a base URL (".../v1") and the full endpoint.
        self.endpoint = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: float) -> LLMClient | None:
        """A client from LSMSEG_LLM_URL / _MODEL / _API_KEY, or None when no URL is set (LLM disabled)."""
        environ = os.environ if environ is None else environ
        url = environ.get("LSMSEG_LLM_URL", "").strip()
        if not url:
            return None
        model = environ.get("LSMSEG_LLM_MODEL", "").strip()
        if not model:
            raise LLMNotConfiguredError("LSMSEG_LLM_URL is set but LSMSEG_LLM_MODEL is not")
        return cls(url, model, environ.get("LSMSEG_LLM_API_KEY") or None, **options)

    def describe(self, class_name: str) -> list[str]:
        """One sentence per attribute, in ATTRIBUTES order, each within CLIP's 77 tokens."""
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": _SYSTEM_MESSAGE},
                {"role": "user", "content": request_text(class_name)},
            ],
            "temperature": 0,
        }
        response = self._post_with_retries(payload)
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMAnswerError(f"{self.endpoint} did not send a chat-completions answer") from exc
        if not isinstance(content, str):
            raise LLMAnswerError(f"{self.endpoint} sent a message without text content")
        return parse_descriptions(content)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post_with_retries(self, payload: dict) -> httpx.Response:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                response = self._http.post(self.endpoint, json=payload)
            except httpx.TimeoutException:
                problem = "timed out"
            except httpx.TransportError as exc:
                problem = f"transport error: {exc}"
            else:
                if response.status_code == 200:
                    return response
                if response.status_code != 429 and response.status_code < 500:
                    raise LLMRejectedError(
                        f"{self.endpoint} answered HTTP {response.status_code}: {response.text[:200]}"
                    )
                problem = f"HTTP {response.status_code}"
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                if retry_after is not None and retry_after > self.max_retry_after_s:
                    raise LLMUnavailableError(
                        f"{self.endpoint} answered {problem} and asked to wait {retry_after:.0f} s "
                        f"(more than {self.max_retry_after_s:.0f} s)"
                    )
            if attempt + 1 < attempts:
                time.sleep(retry_after if retry_after is not None else self._backoff(attempt))
        raise LLMUnavailableError(f"{self.endpoint} failed {attempts} times; last: {problem}")

    def _backoff(self, attempt: int) -> float:
        # Exponential, capped, with jitter so parallel workers do not retry in lock-step.
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


_SYSTEM_MESSAGE = (
    "You write short visual descriptions of object and scene categories for the CLIP text encoder. "
    "Answer with one JSON object and nothing else."
)


def request_text(class_name: str) -> str:
    """The user message for one class: the paper's per-attribute request, all attributes at once."""
    name = normalise_name(class_name)
    subject = first_synonym(name)
    synonyms = [part.strip() for part in name.split(",")[1:] if part.strip()]
    also = f" (also called: {', '.join(synonyms)})" if synonyms else ""
    attributes = [attribute for attribute in ATTRIBUTES if attribute != "combined"]
    return (
        f"Describe a {subject}{also} with respect to a given attribute, for each of these attributes: "
        f"{', '.join(attributes)}. Each description should not exceed {CONTEXT_LENGTH} tokens, consistent "
        f"with the CLIP tokenizer limit.\n"
        f"Then write one comprehensive sentence about a {subject} that combines these attributes, also not "
        f"exceeding {CONTEXT_LENGTH} tokens.\n"
        f"Answer with a JSON object with exactly these keys, each holding one string: "
        f"{', '.join(json.dumps(attribute) for attribute in ATTRIBUTES)}."
    )


def parse_descriptions(content: str) -> list[str]:
    """The model's answer -> one validated sentence per attribute (ATTRIBUTES order), or LLMAnswerError."""
    answer = _json_object(content)
    lowered = {key.strip().lower(): value for key, value in answer.items()}
    by_attribute = {_KEY_ALIASES.get(key, key): value for key, value in lowered.items()}
    sentences = []
    for attribute in ATTRIBUTES:
        value = by_attribute.get(attribute)
        if isinstance(value, list) and len(value) == 1:  # "exactly one" sentence, even if wrapped in a list
            value = value[0]
        if not isinstance(value, str) or not value.strip():
            raise LLMAnswerError(f"the answer has no single non-empty {attribute!r} description")
        sentence = " ".join(value.split())
        tokens = token_count(sentence)
        if tokens > CONTEXT_LENGTH:
            raise LLMAnswerError(
                f"the {attribute!r} description has {tokens} tokens; CLIP allows {CONTEXT_LENGTH}"
            )
        sentences.append(sentence)
    return sentences


def _json_object(content: str) -> dict:
    """Parse a JSON object even when it is wrapped in a code fence or in prose."""
    candidates = [content]
    found = _JSON_OBJECT.search(content)
    if found:
        candidates.append(found.group(0))
    for candidate in candidates:
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            return parsed
    raise LLMAnswerError(f"the answer is not a JSON object: {content[:120]!r}")


def _retry_after_seconds(header: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
