"""What the model thread does with a batch: text embeddings from the cache tiers, then one Segmenter call per
distinct top-k (usually one), with every image carrying its own vocabulary."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model import LSMSeg, Segmentation
from prompt_cache import EmbeddingStore
from prompt_cache.modes import DEFAULT_PROMPT_MODE, class_encoder
from service.backends import Backend

logger = logging.getLogger(__name__)

_WARM_UP_CLASSES = ("wall", "sky")


@dataclass(frozen=True)
class SegmentJob:
    image: np.ndarray  # H×W×3 uint8
    vocab_id: str  # content id of the class list: equal ids share one text tensor within a batch
    prompts: Sequence[Sequence[str]]  # C lists of P prompts
    top_k: int | None


@dataclass(frozen=True)
class SegmentOutput:
    segmentation: Segmentation
    timings: dict[str, float]  # seconds of the whole batch: text, clip, sam, cfm, refine, postprocess
    batch_size: int


class Engine:
    """Owns the model; used from the model thread only."""

    def __init__(
        self, model: LSMSeg, store: EmbeddingStore, backend: Backend, prompt_mode: str = DEFAULT_PROMPT_MODE
    ) -> None:
        self.model = model
        self.store = store
        self.backend = backend
        self.segmenter = backend.segmenter
        self._encode = class_encoder(prompt_mode, model.encode_text)  # ensemble: averages each class's list

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
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
        start = time.perf_counter()
        texts: dict[str, torch.Tensor] = {}
        for job in jobs:
            if job.vocab_id not in texts:
                texts[job.vocab_id] = self.store.get(job.prompts, self.encode_text)
        timings["text"] = time.perf_counter() - start
        groups: dict[int | None, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.top_k, []).append(index)
        results: list[SegmentOutput | BaseException | None] = [None] * len(jobs)
        for top_k, indices in groups.items():
            self._segment(jobs, indices, texts, top_k, timings, results)
        return [
            SegmentOutput(result, timings, len(jobs)) if isinstance(result, Segmentation) else result
            for result in results
        ]

    def _segment(
        self,
        jobs: Sequence[SegmentJob],
        indices: list[int],
        texts: dict[str, torch.Tensor],
        top_k: int | None,
        timings: dict[str, float],
        results: list,
    ) -> None:
        images = [jobs[index].image for index in indices]
        text = [texts[jobs[index].vocab_id] for index in indices]
        try:
            batch = self.segmenter.segment(images, text, k=top_k)
        except Exception as exc:
            if len(indices) == 1:
                results[indices[0]] = exc
                return
            # One bad sample must not fail its neighbours: retry one by one.
            logger.warning("batch of %d failed (%s); retrying one by one", len(indices), exc)
            for index in indices:
                self._segment(jobs, [index], texts, top_k, timings, results)
            return
        for stage, seconds in batch.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
        for index, segmentation in zip(indices, batch.results, strict=True):
            results[index] = segmentation
