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
from collections.abc import Iterator
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

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.device.type != "cuda":
            start = time.perf_counter()
            yield
            self._wall[name] = self._wall.get(name, 0.0) + time.perf_counter() - start
            return
        stream = torch.cuda.current_stream(self.device)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        yield
        end.record(stream)
        self._events.append((name, begin, end))

    def seconds(self) -> dict[str, float]:
        """Seconds per stage so far, in the order the stages first ran (waits until the GPU has run them)."""
        totals = dict(self._wall)
        for name, begin, end in self._events:
            end.synchronize()  # a no-op once the GPU is past it, so the batch waits about once
            totals[name] = totals.get(name, 0.0) + begin.elapsed_time(end) / 1000
        return totals
