"""Class prompts no cache tier had, encoded on the model thread a chunk at a time, within a shared backlog.

Encoding text is the one cost a small request can make large: 1024 never-seen classes are ~20 s of a 2-core
CPU. So a request's misses are encoded in chunks of LSMSEG_TEXT_CHUNK_CLASSES, each one a separate step of
the model thread between image batches (other requests wait one chunk at most), and the classes waiting to
be encoded across all requests are bounded by LSMSEG_TEXT_BACKLOG_CLASSES: a request that would push the
backlog beyond it is refused at once (503 text_backlog_full, Retry-After from the measured encoding rate),
so a stream of such requests cannot fill the worker's queue or take the model thread from everyone else.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch

from lsmseg.service.batcher import Batcher
from lsmseg.service.exceptions import EncodingBacklogFull
from lsmseg.service.metrics import Metrics

EncodeFn = Callable[[list[list[str]]], torch.Tensor]


class TextEncoder:
    def __init__(self, batcher: Batcher, metrics: Metrics, chunk_classes: int, backlog_classes: int) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.chunk_classes = chunk_classes
        self.backlog_classes = backlog_classes
        self._lock = threading.Lock()
        self._waiting = 0  # classes reserved by requests and not encoded yet
        self._seconds_per_class = 0.0  # moving average, for Retry-After

    async def encode(self, encode_fn: EncodeFn, prompts: list[list[str]], deadline: float) -> torch.Tensor:
        """M×P×D embeddings of `prompts` (M prompt lists); TimedOut once `deadline` (perf_counter) passes."""
        with self._reserve(len(prompts)) as done:
            parts = []
            for first in range(0, len(prompts), self.chunk_classes):
                if time.perf_counter() > deadline:
                    raise self.batcher.timed_out()
                chunk = prompts[first : first + self.chunk_classes]
                start = time.perf_counter()
                parts.append(await self.batcher.between_batches(partial(encode_fn, chunk)))
                done(len(chunk), time.perf_counter() - start)
            return torch.cat(parts)

    def check_room(self, names: Sequence[str]) -> None:
        """EncodingBacklogFull now if these class names, when all new, would not fit the backlog: asked
        before their prompts are built, so that a stream of such requests costs little to refuse."""
        with self._lock:
            self._refuse_beyond(len(names))

    @contextmanager
    def _reserve(self, classes: int) -> Iterator[Callable[[int, float], None]]:
        with self._lock:
            self._refuse_beyond(classes)
            self._waiting += classes
        left = classes

        def done(count: int, seconds: float) -> None:
            nonlocal left
            with self._lock:
                self._waiting -= count
                rate = seconds / count
                self._seconds_per_class = 0.8 * (self._seconds_per_class or rate) + 0.2 * rate
            left -= count

        try:
            yield done
        finally:
            with self._lock:
                self._waiting -= left

    def _refuse_beyond(self, classes: int) -> None:
        if self._waiting and self._waiting + classes > self.backlog_classes:
            self.metrics.rejected.labels("text_backlog").inc()
            raise EncodingBacklogFull(
                f"{self._waiting} new class names are waiting to be encoded already; retry shortly",
                self._waiting * max(self._seconds_per_class, 0.01),
            )
