"""Which model the worker runs, from the settings: a checkpoint, a preset with pretrained weights, or, when
nothing is configured and the demo checkpoint is absent, the random `tiny` preset (with a loud warning)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lsmseg.model import (
    LSMSeg,
    WeightsNotFoundError,
    build_model,
    clip_weights_file,
    load_checkpoint,
    read_metadata,
)
from lsmseg.model.config import PRESETS
from lsmseg.model.device import resolve_device
from lsmseg.prompt_cache.modes import DEFAULT_PROMPT_MODE, recorded_prompt_mode, resolve_prompt_mode
from lsmseg.service.schemas import ModelStatus
from lsmseg.service.settings import DEFAULT_CHECKPOINT, Settings

logger = logging.getLogger(__name__)

FALLBACK_PRESET = "tiny"
# The setting that names each part's weights: model/ speaks of its own arguments, the service of its settings.
_WEIGHT_SETTINGS = {
    "checkpoint": "LSMSEG_CHECKPOINT",
    "clip": "LSMSEG_CLIP_WEIGHTS",
    "sam": "LSMSEG_SAM_CHECKPOINT",
}


class ModelConfigError(ValueError):
    """The settings name a model that cannot be loaded; the message says what to fix."""


@dataclass(frozen=True)
class ModelPlan:
    """What to load, decided before anything heavy happens (so `lsmseg-serve` fails fast)."""

    source: str  # checkpoint | preset | random-fallback
    checkpoint: Path | None
    preset: str | None
    prompt_mode: str = DEFAULT_PROMPT_MODE  # prompt_cache.modes: LSMSEG_PROMPT_MODE, else the checkpoint's

    @property
    def random_weights(self) -> bool:
        return self.source == "random-fallback"


def plan_model(settings: Settings) -> ModelPlan:
    """Resolve the model source and check that its files exist; ModelConfigError otherwise."""
    if settings.backend == "onnx":
        _check_onnx(settings)
    if settings.preset is not None:
        if settings.preset not in PRESETS:
            raise ModelConfigError(f"unknown LSMSEG_PRESET {settings.preset!r}; known: {sorted(PRESETS)}")
        if settings.sam_checkpoint is not None and not settings.sam_checkpoint.is_file():
            raise ModelConfigError(f"LSMSEG_SAM_CHECKPOINT {str(settings.sam_checkpoint)!r} does not exist")
        if settings.clip_weights is not None:
            # A tag such as "openai" is looked up in open_clip's cache while loading; a file must exist now.
            with _naming_the_setting():
                clip_weights_file(settings.clip_weights)
        mode = _prompt_mode(settings, DEFAULT_PROMPT_MODE, PRESETS[settings.preset].prompts_per_class)
        return ModelPlan("preset", None, settings.preset, mode)
    checkpoint = settings.checkpoint
    if checkpoint is None:
        if not DEFAULT_CHECKPOINT.is_file():
            mode = _prompt_mode(settings, DEFAULT_PROMPT_MODE, PRESETS[FALLBACK_PRESET].prompts_per_class)
            return ModelPlan("random-fallback", None, FALLBACK_PRESET, mode)
        checkpoint = DEFAULT_CHECKPOINT
    if not checkpoint.is_file():
        raise ModelConfigError(
            f"LSMSEG_CHECKPOINT {str(checkpoint)!r} does not exist; unset it to use the embedded default"
        )
    try:
        metadata = read_metadata(checkpoint)
    except Exception as exc:  # safetensors, JSON and key errors alike mean "not a checkpoint"
        raise ModelConfigError(f"{checkpoint} is not a readable LSMSeg checkpoint: {exc}") from exc
    mode = _prompt_mode(settings, recorded_prompt_mode(metadata), metadata["config"].prompts_per_class)
    return ModelPlan("checkpoint", checkpoint, None, mode)


def _prompt_mode(settings: Settings, recorded: str, prompts_per_class: int) -> str:
    try:
        return resolve_prompt_mode(recorded, settings.prompt_mode, prompts_per_class)
    except ValueError as exc:
        where = "LSMSEG_PROMPT_MODE" if settings.prompt_mode is not None else "the checkpoint's recorded mode"
        raise ModelConfigError(f"{where}: {exc}") from exc


def _check_onnx(settings: Settings) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        raise ModelConfigError("LSMSEG_BACKEND=onnx needs onnxruntime: pip install 'lsmseg[onnx]'")
    if settings.onnx_path is not None and not settings.onnx_path.is_file():
        raise ModelConfigError(
            f"LSMSEG_ONNX_PATH {str(settings.onnx_path)!r} does not exist; unset it to export at start-up"
        )


@contextmanager
def _naming_the_setting() -> Iterator[None]:
    """A missing weights file becomes a ModelConfigError that also names the setting to fix."""
    try:
        yield
    except WeightsNotFoundError as exc:
        setting = _WEIGHT_SETTINGS.get(exc.part)
        if setting is None:
            raise
        raise ModelConfigError(f"{exc} (setting: {setting})") from exc


def load_model(plan: ModelPlan, settings: Settings) -> tuple[LSMSeg, ModelStatus]:
    """Build or load the model on the configured device (ModelConfigError names the setting of a missing
    weights file)."""
    device = str(resolve_device(settings.device))
    if settings.backend == "onnx":
        device = "cpu"  # onnxruntime runs the image graph; torch only feeds it and encodes text
    if settings.torch_threads is not None:
        # On a CPU shared with other processes (or a container's CPU quota) fewer threads beat many
        # threads spinning at barriers.
        torch.set_num_threads(settings.torch_threads)
    if plan.random_weights:
        logger.warning(
            "\n%s\n!! NO MODEL CONFIGURED AND %s IS MISSING.\n!! Serving the %r preset with RANDOM weights:"
            " its masks are meaningless.\n!! Set LSMSEG_CHECKPOINT (or LSMSEG_PRESET with weights) for a"
            " real model.\n%s",
            "!" * 100, DEFAULT_CHECKPOINT, plan.preset, "!" * 100,
        )
    if plan.checkpoint is not None:
        with _naming_the_setting():
            model = load_checkpoint(plan.checkpoint, device, sam_checkpoint=settings.sam_checkpoint)
        prompt_version = model.checkpoint_metadata.get("prompt_version") or None
        domain = model.checkpoint_metadata.get("domain")
    else:
        assert plan.preset is not None
        # Seeded, so random weights are the same after every restart: equal text fingerprints keep the
        # Redis embedding cache valid (and free of a new set of keys per restart).
        with torch.random.fork_rng(devices=[]), _naming_the_setting():
            torch.manual_seed(0)
            model = build_model(
                plan.preset, clip_pretrained=settings.clip_weights, sam_checkpoint=settings.sam_checkpoint
            )
        model = model.to(device)
        prompt_version = None
        domain = None  # a preset's head is untrained (random weights say so above)
    config = model.config
    status = ModelStatus(
        name=config.name,
        source=plan.source,
        # The file name only: where the worker keeps its files is nobody else's business.
        path=plan.checkpoint.name if plan.checkpoint is not None else None,
        random_weights=plan.random_weights or (plan.preset is not None and settings.clip_weights is None),
        device=device,
        image_size=config.image_size,
        prompts_per_class=config.prompts_per_class,
        cfm_k=config.cfm_k,
        prompt_version=prompt_version,
        prompt_mode=plan.prompt_mode,
        domain=domain,
        backend=settings.backend,
        providers=[],  # known once the backend is built (startup.py)
    )
    return model.eval(), status
