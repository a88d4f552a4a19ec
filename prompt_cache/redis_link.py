"""One Redis client for the hot path: sub-second timeouts, one immediate retry, and a circuit breaker.

redis-py's default retry policy takes ~3.7 s to give up on a refused connection; a cache must fail in
milliseconds instead and then stop trying for a while (`cooldown_s`), so that an outage costs each request
nothing. After the cooldown the next operation (or `state()`) probes again and closes the breaker on success.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lsmseg.prompt_cache.errors import RedisUnavailable

T = TypeVar("T")


class RedisLink:
    """Shared by EmbeddingStore and VocabRegistry so both see one breaker; url None disables Redis."""

    def __init__(self, url: str | None, *, timeout_s: float = 0.25, cooldown_s: float = 2.0) -> None:
        self.url = url
        self.cooldown_s = cooldown_s
        self.outages = 0  # up -> down transitions
        self.failures = 0  # operations that failed on the network or in Redis
        self.skipped = 0  # operations refused while the breaker was open
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._client = (
            None
            if url is None
            else redis.Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                # One immediate retry reconnects a pooled socket that a Redis restart left dead.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
                # A vocabulary's MGET reply is ~1 MB (847 × P×512 float16): read it in few syscalls.
                socket_read_size=1 << 20,
            )
        )

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def may_try(self) -> bool:
        """True unless the breaker is open and still cooling down."""
        with self._lock:
            return self._down_since is None or time.monotonic() - self._down_since >= self.cooldown_s

    def state(self) -> str:
        """'up', 'down' or 'disabled', for /readyz. Probes with PING unless the breaker is cooling down."""
        if self._client is None:
            return "disabled"
        if not self.may_try():
            return "down"
        try:
            self.run(lambda client: client.ping())
        except RedisUnavailable:
            return "down"
        return "up"

    def run(self, operation: Callable[[redis.Redis], T]) -> T:
        """Run `operation(client)`; any Redis problem becomes RedisUnavailable, fast."""
        if self._client is None:
            raise RedisUnavailable("Redis is disabled (no URL configured)", attempted=False)
        if not self.may_try():
            with self._lock:
                self.skipped += 1
            raise RedisUnavailable("Redis is down; waiting before the next attempt", attempted=False)
        try:
            result = operation(self._client)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            with self._lock:
                self.failures += 1
                if self._down_since is None:
                    self.outages += 1
                self._down_since = time.monotonic()  # (re)start the cooldown
            raise RedisUnavailable(f"Redis is unreachable: {exc}", attempted=True) from exc
        except redis.RedisError as exc:
            # The server answered (e.g. out of memory): not an outage, so the breaker stays closed.
            with self._lock:
                self.failures += 1
            raise RedisUnavailable(f"Redis refused the operation: {exc}", attempted=True) from exc
        with self._lock:
            self._down_since = None
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
