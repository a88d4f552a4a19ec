"""Dynamic micro-batching on one model thread.

Requests wait in a bounded queue. The model thread takes the oldest one and waits until `max_batch`
requests are there or `max_wait_s` has passed since that oldest one arrived, then runs them as one batch.
It waits only while more requests are on their way (being read and decoded, see `arriving`): a lone
request never pays `max_wait_s`, and under load batches still fill up.
The model is touched by this thread only (it loads it too), so nothing else needs a lock around it.
A full queue or a model that is not ready is refused at once (503 + Retry-After); a request whose client
went away is taken out of the queue and never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import ApiError, unavailable
from service.metrics import Metrics

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
RunBatch = Callable[[Sequence[P]], Sequence[R | BaseException]]

_LOADING_RETRY_S = 5.0
_FAILED_RETRY_S = 60.0


@dataclass(eq=False)
class Job(Generic[P, R]):
    payload: P
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when the model thread took it

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.enqueued


class Batcher(Generic[P, R]):
    """`startup()` runs first on the model thread and returns the function that processes a batch."""

    def __init__(self, max_batch: int, max_wait_s: float, queue_size: int, metrics: Metrics) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.metrics = metrics
        self.state = "idle"  # idle -> loading -> ready | failed; stopped at shutdown
        self.error: str | None = None
        self._queue: deque[Job[P, R]] = deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._arriving = 0  # requests being prepared that will be submitted soon
        self._thread: threading.Thread | None = None
        self._batch_seconds = 0.0  # moving average, for Retry-After estimates

    # Event-loop side -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Wrap a request's preparation up to submit(): a forming batch may wait for it."""
        with self._condition:
            self._arriving += 1
        try:
            yield
        finally:
            with self._condition:
                self._arriving -= 1
                self._condition.notify_all()

    def submit(self, payload: P) -> Job[P, R]:
        """Queue one request; ApiError 503 when the model is not ready or the queue is full."""
        if self.state != "ready":
            self.metrics.rejected.labels("not_ready").inc()
            raise self.not_ready_error()
        loop = asyncio.get_running_loop()
        job: Job[P, R] = Job(payload, loop.create_future(), loop)
        with self._condition:
            if len(self._queue) >= self.queue_size:
                self.metrics.rejected.labels("queue_full").inc()
                raise unavailable(
                    "queue_full",
                    f"the server is busy ({len(self._queue)} requests waiting); retry shortly",
                    self._retry_after_s(),
                )
            self._queue.append(job)
            self.metrics.queue_depth.set(len(self._queue))
            self._condition.notify()
        return job

    def cancel(self, job: Job[P, R]) -> None:
        """Take a job out of the queue (its client left or gave up); a running batch simply drops it."""
        with self._condition:
            with contextlib.suppress(ValueError):  # already taken by the model thread
                self._queue.remove(job)
            self.metrics.queue_depth.set(len(self._queue))
        if not job.future.done():
            job.future.cancel()

    def timed_out(self) -> ApiError:
        self.metrics.rejected.labels("timeout").inc()
        return unavailable("timeout", "no result in time; the server is overloaded", self._retry_after_s())

    def not_ready_error(self) -> ApiError:
        if self.state == "failed":
            return unavailable("model_failed", f"the model failed to load: {self.error}", _FAILED_RETRY_S)
        return unavailable("not_ready", "the model is still loading; retry shortly", _LOADING_RETRY_S)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # Model thread ----------------------------------------------------------------------------------------
    def start(self, startup: Callable[[], RunBatch]) -> None:
        self.state = "loading"
        self._thread = threading.Thread(target=self._main, args=(startup,), name="model", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._condition:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._condition.notify_all()
        for job in pending:
            _resolve(job, unavailable("shutting_down", "the server is shutting down", _LOADING_RETRY_S))
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.state = "stopped"

    def _main(self, startup: Callable[[], RunBatch]) -> None:
        try:
            run_batch = startup()
        except BaseException as exc:  # report any load failure (missing weights, OOM...) on /readyz
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            logger.error("model start-up failed: %s", self.error, exc_info=exc)
            return
        self.state = "ready"
        logger.info("model ready")
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._run(run_batch, batch)

    def _next_batch(self) -> list[Job[P, R]] | None:
        """Up to max_batch live jobs, once the batch is full, nothing more is arriving, or the oldest job
        has waited max_wait_s."""
        with self._condition:
            while not self._queue and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            deadline = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch and self._arriving and not self._stopping:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or not self._queue:
                    break
                self._condition.wait(remaining)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                job = self._queue.popleft()
                if not job.future.cancelled():
                    batch.append(job)
            self.metrics.queue_depth.set(len(self._queue))
        return batch

    def _run(self, run_batch: RunBatch, batch: list[Job[P, R]]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.started = start
        self.metrics.batch_size.observe(len(batch))
        try:
            results = list(run_batch([job.payload for job in batch]))
        except Exception as exc:  # a bug in the batch function: fail these requests, keep serving
            logger.exception("batch of %d failed", len(batch))
            results = [exc] * len(batch)
        for job, result in zip(batch, results, strict=True):
            _resolve(job, result)
        elapsed = time.perf_counter() - start
        previous = self._batch_seconds or elapsed
        self._batch_seconds = 0.8 * previous + 0.2 * elapsed

    def _retry_after_s(self) -> float:
        batches_ahead = len(self._queue) / self.max_batch + 1
        return batches_ahead * max(self._batch_seconds, 0.1)


def _resolve(job: Job, result: object) -> None:
    def settle() -> None:
        if job.future.done():  # cancelled meanwhile
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the event loop is already closed (shutdown)
        job.loop.call_soon_threadsafe(settle)
