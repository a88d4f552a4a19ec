"""What the model thread does: one Segmenter call per distinct top-k in a batch (usually one), every image
with its own vocabulary's text embeddings, and the encoding of class prompts no cache tier had. The cache
tiers themselves (memory, Redis) are read and written while requests are prepared, never on this thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lsmseg.model import LSMSeg, Segmentation
from lsmseg.prompt_cache.modes import DEFAULT_PROMPT_MODE, class_encoder
from lsmseg.service.backends import Backend

logger = logging.getLogger(__name__)

_WARM_UP_CLASSES = ("wall", "sky")


@dataclass(frozen=True)
class SegmentJob:
    image: np.ndarray  # H×W×3 uint8
    text: torch.Tensor  # C×P×D embeddings of the image's vocabulary
    top_k: int | None


@dataclass(frozen=True)
class SegmentOutput:
    segmentation: Segmentation
    timings: dict[str, float]  # seconds per model stage (model/timing.py) of the whole batch
    batch_size: int


class Engine:
    """Owns the model; used from the model thread only."""

    def __init__(self, model: LSMSeg, backend: Backend, prompt_mode: str = DEFAULT_PROMPT_MODE) -> None:
        self.model = model
        self.backend = backend
        self.segmenter = backend.segmenter
        self._encode = class_encoder(prompt_mode, model.encode_text)  # ensemble: averages each class's list

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        with torch.no_grad():
            return self._encode(prompts)

    def warm_up(self) -> None:
        """One small batch through every stage, so the first real request does not pay for lazy set-up."""
        start = time.perf_counter()
        size = self.model.config.image_size
        per_class = self.model.config.prompts_per_class
        text = self.encode_text([[f"a photo of a {name}."] * per_class for name in _WARM_UP_CLASSES])
        image = np.zeros((size, size, 3), dtype=np.uint8)
        self.segmenter.segment([image], text)
        logger.info("warm-up done in %.2f s", time.perf_counter() - start)

    def run(self, jobs: Sequence[SegmentJob]) -> list[SegmentOutput | BaseException]:
        timings: dict[str, float] = {}
        groups: dict[int | None, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.top_k, []).append(index)
        results: list[SegmentOutput | BaseException | None] = [None] * len(jobs)
        for top_k, indices in groups.items():
            self._segment(jobs, indices, top_k, timings, results)
        return [
            SegmentOutput(result, timings, len(jobs)) if isinstance(result, Segmentation) else result
            for result in results
        ]

    def _segment(
        self,
        jobs: Sequence[SegmentJob],
        indices: list[int],
        top_k: int | None,
        timings: dict[str, float],
        results: list,
    ) -> None:
        images = [jobs[index].image for index in indices]
        text = [jobs[index].text for index in indices]
        try:
            batch = self.segmenter.segment(images, text, k=top_k)
        except Exception as exc:
            if len(indices) == 1:
                results[indices[0]] = exc
                return
            # One bad sample must not fail its neighbours: retry one by one.
            logger.warning("batch of %d failed (%s); retrying one by one", len(indices), exc)
            for index in indices:
                self._segment(jobs, [index], top_k, timings, results)
            return
        for stage, seconds in batch.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
        for index, segmentation in zip(indices, batch.results, strict=True):
            results[index] = segmentation
