"""Seconds per inference stage of one batch, and the names of those stages (service/metrics.py adds the
request's own: decode, queue, text, encode).

On a GPU a stage's kernels are still running when its Python code returns. Synchronising after every stage
would time them exactly but stall the pipeline between stages, in production, for every batch; instead each
stage is bracketed by two CUDA events recorded in the stream, read once per image, after its label map has
come back to the host (the GPU is past them by then).
On the CPU work is done when the call returns, so the wall clock times it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

CLIP = "clip"  # CLIP image features
SAM = "sam"  # SAM features and their fusion with CLIP's
CFM = "cfm"  # category filtering: the k classes kept per image
REFINE = "refine"  # refinement head and decoder
ONNX = "onnx"  # clip..refine in one onnxruntime graph (the ONNX backend)
POSTPROCESS = "postprocess"  # edge refinement, label maps at the images' sizes, per-class scores
MODEL_STAGES = (CLIP, SAM, CFM, REFINE, ONNX, POSTPROCESS)


class StageTimer:
    """Adds up the time of named stages for one batch on one device; read the totals when a result is out."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._wall: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._current: tuple[str, float | torch.cuda.Event] | None = None  # the open stage, since when

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._open(name)
        try:
            yield
        finally:
            self._close()

    def aside(self, call: Callable[[], object]) -> None:
        """Run `call` without counting it in the stage now open (other work done in the middle of it)."""
        if self._current is None:
            call()
            return
        name = self._current[0]
        self._close()
        try:
            call()
        finally:
            self._open(name)

    def _open(self, name: str) -> None:
        if self.device.type != "cuda":
            self._current = (name, time.perf_counter())
            return
        begin = torch.cuda.Event(enable_timing=True)
        begin.record(torch.cuda.current_stream(self.device))
        self._current = (name, begin)

    def _close(self) -> None:
        assert self._current is not None
        name, begin = self._current
        self._current = None
        if isinstance(begin, float):
            self._wall[name] = self._wall.get(name, 0.0) + time.perf_counter() - begin
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self.device))
        self._events.append((name, begin, end))

    def seconds(self) -> dict[str, float]:
        """Seconds per stage so far, in the order the stages first ran (waits until the GPU has run them)."""
        totals = dict(self._wall)
        for name, begin, end in self._events:
            end.synchronize()  # a no-op once the GPU is past it, so the batch waits about once
            totals[name] = totals.get(name, 0.0) + begin.elapsed_time(end) / 1000
        return totals
