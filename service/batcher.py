"""Dynamic micro-batching on one model thread, with admission before any expensive work.

A request first takes a place (`admit`) — before its body is read — so that a full worker refuses it at
once (QueueFull, a 503 with Retry-After) instead of after reading, decoding and resolving it. `queue_size`
bounds the admitted requests the model thread has not taken yet: those being read and decoded, and those
queued. Once decoded, a request counts as arriving (`Admission.arriving`); then it is submitted. The model
thread takes the oldest queued request and waits until `max_batch` are there, or nothing more is arriving, or
`max_wait_s` has passed since that oldest one was queued, then runs them as one batch: a lone request never
pays `max_wait_s`, and a slow upload, not yet decoded, delays nobody's batch. Each request of a batch is
answered as soon as its own result is out (a small image's label map need not wait for a large one's), and
a running batch lets queued requests that cost less than what it is doing go first, at its safe points
(`serve_cheaper`): a large photo's label map does not hold up the small requests that came meanwhile, while
requests of one size never overtake each other (so batches stay full under steady load).
Other model work (`between_batches`, e.g. encoding one chunk of new class names) runs when no batch is ready,
and alternately with batches while both wait, so neither starves the other.
The model is touched by this thread only (it loads it too), so nothing else needs a lock around it. A request
whose client went away is taken out of the queue and never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lsmseg.service.exceptions import ModelFailed, NotReady, QueueFull, ShuttingDown, TimedOut, Unavailable
from lsmseg.service.metrics import Metrics

logger = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")
# A batch function gives each payload's result, by its position, as soon as it has it (in any order), and
# calls its second argument now and then with the cost of what it is doing (Batcher.serve_cheaper).
RunBatch = Callable[[Sequence[P], Callable[[int], None]], Iterable[tuple[int, R | BaseException]]]


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


@dataclass(eq=False)
class _Work:
    """A call to run on the model thread between batches."""

    call: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class Admission(Generic[P, R]):
    """One admitted request's place, from before its body is read until it is queued (or gives up)."""

    def __init__(self, batcher: Batcher[P, R]) -> None:
        self._batcher = batcher
        self._held = True
        self._arriving = False

    def arriving(self) -> None:
        """The request is decoded and will be submitted soon: a forming batch may wait for it."""
        self._batcher._mark_arriving(self)

    def submit(self, payload: P) -> Job[P, R]:
        """Queue the request in this place (ShuttingDown when the worker stops meanwhile)."""
        return self._batcher._submit(self, payload)

    def __enter__(self) -> Admission[P, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._batcher._release(self)  # a no-op once submitted


class Batcher(Generic[P, R]):
    """`startup()` runs first on the model thread and returns the function that processes a batch."""

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        metrics: Metrics,
        cost: Callable[[P], int] | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.metrics = metrics
        self.state = "idle"  # idle -> loading -> ready | failed; stopped at shutdown
        self.error: str | None = None
        self._queue: deque[Job[P, R]] = deque()
        self._work: deque[_Work] = deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._admitted = 0  # places held by requests not submitted yet (being read, decoded, resolved)
        self._arriving = 0  # of those, the decoded ones
        self._work_turn = False  # after a batch, waiting work goes first
        self._thread: threading.Thread | None = None
        self._batch_seconds = 0.0  # moving average, for Retry-After estimates
        self._cost = cost  # of a request, in serve_cheaper's unit; None: requests never overtake
        self._run_batch: RunBatch | None = None
        self._overtaking = False  # a batch of cheaper requests is running inside another one

    # Event-loop side -------------------------------------------------------------------------------------
    def admit(self) -> Admission[P, R]:
        """A place for one request; NotReady, ModelFailed or QueueFull (Unavailable) when there is none."""
        if self.state != "ready":
            self.metrics.rejected.labels("not_ready").inc()
            raise self.not_ready_error()
        with self._condition:
            if self._stopping:
                raise ShuttingDown()
            waiting = self.depth
            if waiting >= self.queue_size:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(
                    f"the server is busy ({waiting} requests waiting); retry shortly", self._retry_after_s()
                )
            self._admitted += 1
            self._publish_depth()
        return Admission(self)

    def between_batches(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run `call()` on the model thread when no batch is ready (or in turn with batches)."""
        loop = asyncio.get_running_loop()
        work = _Work(call, loop.create_future(), loop)
        with self._condition:
            if self._stopping:
                raise ShuttingDown()
            self._work.append(work)
            self._condition.notify()
        return work.future

    def cancel(self, job: Job[P, R]) -> None:
        """Take a job out of the queue (its client left or gave up); a running batch simply drops it."""
        with self._condition:
            with contextlib.suppress(ValueError):  # already taken by the model thread
                self._queue.remove(job)
            self._publish_depth()
        if not job.future.done():
            job.future.cancel()

    def timed_out(self) -> Unavailable:
        self.metrics.rejected.labels("timeout").inc()
        return TimedOut("no result in time; the server is overloaded", self._retry_after_s())

    def not_ready_error(self) -> Unavailable:
        if self.state == "failed":
            return ModelFailed(self.error or "unknown error")
        if self.state == "stopped":
            return ShuttingDown()
        return NotReady()

    @property
    def depth(self) -> int:
        """Admitted requests the model thread has not taken yet."""
        return len(self._queue) + self._admitted

    def _mark_arriving(self, admission: Admission[P, R]) -> None:
        with self._condition:
            if admission._held and not admission._arriving:
                admission._arriving = True
                self._arriving += 1

    def _submit(self, admission: Admission[P, R], payload: P) -> Job[P, R]:
        loop = asyncio.get_running_loop()
        job: Job[P, R] = Job(payload, loop.create_future(), loop)
        with self._condition:
            if not admission._held:
                raise RuntimeError("this admission was used already")
            self._give_back(admission)
            if self._stopping:
                raise ShuttingDown()
            self._queue.append(job)
            self._publish_depth()
            self._condition.notify_all()
        return job

    def _release(self, admission: Admission[P, R]) -> None:
        with self._condition:
            if admission._held:
                self._give_back(admission)
                self._publish_depth()
                self._condition.notify_all()  # a forming batch need not wait for it any more

    def _give_back(self, admission: Admission[P, R]) -> None:
        admission._held = False
        self._admitted -= 1
        if admission._arriving:
            self._arriving -= 1

    def _publish_depth(self) -> None:
        self.metrics.queue_depth.set(self.depth)

    # Model thread ----------------------------------------------------------------------------------------
    def start(self, startup: Callable[[], RunBatch]) -> None:
        self.state = "loading"
        self._thread = threading.Thread(target=self._main, args=(startup,), name="model", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._condition:
            self._stopping = True
            pending: list[Job[P, R] | _Work] = [*self._queue, *self._work]
            self._queue.clear()
            self._work.clear()
            self._condition.notify_all()
        for item in pending:
            _resolve(item.future, item.loop, ShuttingDown())
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
        self._run_batch = run_batch
        self.state = "ready"
        logger.info("model ready")
        while True:
            task = self._next_task()
            if task is None:
                return
            if isinstance(task, _Work):
                self._run_work(task)
            elif task:
                self._run(task)

    def _next_task(self) -> list[Job[P, R]] | _Work | None:
        """The next batch (up to max_batch live jobs, once it is full, nothing more is arriving, or the
        oldest job has waited max_wait_s) or the next piece of work; None when stopping."""
        with self._condition:
            while not self._stopping:
                while self._work and self._work[0].future.cancelled():
                    self._work.popleft()
                if self._work and (self._work_turn or not self._queue):
                    self._work_turn = False
                    return self._work.popleft()
                if self._queue:
                    wait_s = self._queue[0].enqueued + self.max_wait_s - time.perf_counter()
                    if self._ready(len(self._queue), wait_s):
                        self._work_turn = True
                        return self._pop_batch()
                    if self._work:  # use the wait for company
                        return self._work.popleft()
                    self._condition.wait(wait_s)
                else:
                    self._condition.wait()
            return None

    def _ready(self, queued: int, wait_s: float) -> bool:
        return queued >= self.max_batch or not self._arriving or wait_s <= 0

    def _pop_batch(self) -> list[Job[P, R]]:
        batch = []
        while self._queue and len(batch) < self.max_batch:
            job = self._queue.popleft()
            if not job.future.cancelled():
                batch.append(job)
        self._publish_depth()
        return batch

    def serve_cheaper(self, cost: int) -> None:
        """Called by the running batch, on the model thread, between the steps of work that costs `cost`:
        queued requests that each cost less run now, as a batch of their own (one level deep), when they
        would form a batch anyway; the running one then goes on."""
        if self._cost is None or self._overtaking:
            return
        with self._condition:
            live = (job for job in self._queue if not job.future.cancelled())
            batch = [job for job in live if self._cost(job.payload) < cost][: self.max_batch]
            if not batch:
                return
            if not self._ready(len(batch), batch[0].enqueued + self.max_wait_s - time.perf_counter()):
                return
            for job in batch:
                self._queue.remove(job)
            self._publish_depth()
        self._overtaking = True
        try:
            self._run(batch)
        finally:
            self._overtaking = False

    def _run(self, batch: list[Job[P, R]]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.started = start
        self.metrics.batch_size.observe(len(batch))
        waiting = dict(enumerate(batch))
        assert self._run_batch is not None  # set before the first batch
        try:
            for index, result in self._run_batch([job.payload for job in batch], self.serve_cheaper):
                job = waiting.pop(index)
                _resolve(job.future, job.loop, result)  # answered now, not when its batch-mates are done
        except Exception as exc:  # a bug in the batch function: fail the unanswered requests, keep serving
            logger.exception("batch of %d failed", len(batch))
            failure: BaseException = exc
        else:
            failure = RuntimeError("the batch function gave no result for this request")
        for job in waiting.values():
            _resolve(job.future, job.loop, failure)
        elapsed = time.perf_counter() - start
        previous = self._batch_seconds or elapsed
        self._batch_seconds = 0.8 * previous + 0.2 * elapsed

    def _run_work(self, work: _Work) -> None:
        try:
            result: object = work.call()
        except Exception as exc:
            result = exc
        _resolve(work.future, work.loop, result)

    def _retry_after_s(self) -> float:
        batches_ahead = self.depth / self.max_batch + 1
        return batches_ahead * max(self._batch_seconds, 0.1)


def _resolve(future: asyncio.Future, loop: asyncio.AbstractEventLoop, result: object) -> None:
    def settle() -> None:
        if future.done():  # cancelled meanwhile
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the event loop is already closed (shutdown)
        loop.call_soon_threadsafe(settle)
