"""What the model thread does: one Segmenter call per distinct top-k in a batch (usually one), every image
with its own vocabulary's text embeddings, and the encoding of class prompts no cache tier had. The cache
tiers themselves (memory, Redis) are read and written while requests are prepared, never on this thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lsmseg.model import LSMSeg, Segmentation
from lsmseg.model.segmenter import BetweenSteps, pixels
from lsmseg.prompt_cache.modes import DEFAULT_PROMPT_MODE, class_encoder
from lsmseg.service.backends import Backend

logger = logging.getLogger(__name__)

_WARM_UP_CLASSES = ("wall", "sky")


@dataclass(frozen=True)
class SegmentJob:
    image: np.ndarray  # H×W×3 uint8
    text: torch.Tensor  # C×P×D embeddings of the image's vocabulary
    top_k: int | None

    @property
    def pixels(self) -> int:
        """What its label map costs, in the unit Segmenter.segment_each's between_steps is given."""
        return pixels(self.image)


@dataclass(frozen=True)
class SegmentOutput:
    segmentation: Segmentation
    timings: dict[str, float]  # seconds per model stage (model/timing.py) of the batch until this result
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

    def run(
        self, jobs: Sequence[SegmentJob], between_steps: BetweenSteps | None = None
    ) -> Iterator[tuple[int, SegmentOutput | BaseException]]:
        """Each job's result, by its position in `jobs`, as soon as it is ready (the batcher answers it).
        `between_steps` is the batcher's chance to serve smaller requests while a label map is made."""
        groups: dict[int | None, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.top_k, []).append(index)
        earlier: dict[str, float] = {}  # stage seconds of the groups run already: later jobs waited for them
        for top_k, indices in groups.items():
            group: dict[str, float] = {}
            for index, result, so_far in self._segment(jobs, indices, top_k, between_steps):
                if isinstance(result, BaseException):
                    yield index, result
                    continue
                group = so_far
                yield index, SegmentOutput(result, _added(earlier, so_far), len(jobs))
            earlier = _added(earlier, group)

    def _segment(
        self,
        jobs: Sequence[SegmentJob],
        indices: list[int],
        top_k: int | None,
        between_steps: BetweenSteps | None,
    ) -> Iterator[tuple[int, Segmentation | BaseException, dict[str, float]]]:
        images = [jobs[index].image for index in indices]
        text = [jobs[index].text for index in indices]
        answered: set[int] = set()
        results = self.segmenter.segment_each(images, text, top_k, between_steps)
        try:
            for position, segmentation, timings in results:
                answered.add(indices[position])
                yield indices[position], segmentation, timings
        except Exception as exc:
            if len(indices) == 1:
                yield indices[0], exc, {}
                return
            # One bad sample must not fail its neighbours: retry the unanswered ones one by one.
            logger.warning("batch of %d failed (%s); retrying one by one", len(indices), exc)
            for index in indices:
                if index not in answered:
                    yield from self._segment(jobs, [index], top_k, between_steps)


def _added(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    return {stage: first.get(stage, 0.0) + second.get(stage, 0.0) for stage in {**first, **second}}
