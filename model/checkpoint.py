"""Checkpoints: one safetensors file, the config and prompt version in its metadata. Nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lsmseg.model.build import WeightsNotFoundError, build_model, sam_missing_message
from lsmseg.model.config import LSMSegConfig
from lsmseg.model.lsmseg import LSMSeg

FORMAT = "lsmseg-checkpoint/1"
_SAM_PREFIX = "sam."


def save_checkpoint(
    model: LSMSeg,
    path: str | Path,
    extra: dict[str, Any] | None = None,
    include_sam: bool | None = None,
    prompt_mode: str | None = None,
    domain: str | None = None,
) -> Path:
    """Write the model's weights and config. Frozen SAM weights are left out by default when they are an
    official segment-anything file (the loader takes that file instead); `extra` goes into the metadata, and
    `prompt_mode` records how the model's class prompts were made (a prompt_cache.modes name, which is
    where it is checked when the checkpoint is used), `domain` in a few words what images the model knows
    (the service shows it, so nobody sends real photos to a model of synthetic shapes unawares)."""
    if include_sam is None:
        include_sam = model.config.sam is None or model.config.sam.checkpoint_file is None
    state = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in model.state_dict().items()
        if include_sam or not name.startswith(_SAM_PREFIX)
    }
    extra = dict(extra or {})
    metadata = {
        "format": FORMAT,
        "config": model.config.to_json(),
        "includes_sam": json.dumps(include_sam and model.sam is not None),
        "prompt_version": str(extra.pop("prompt_version", "")),
        "prompt_mode": prompt_mode or "",
        "domain": domain or "",
        "extra": json.dumps(extra, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, decoded: config (LSMSegConfig), includes_sam, prompt_version, prompt_mode
    and domain (None where the checkpoint does not say), extra."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {str(path)!r} does not exist", "checkpoint")
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        raw = handle.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an LSMSeg checkpoint (format {raw.get('format')!r}, want {FORMAT!r})"
        )
    return {
        "config": LSMSegConfig.from_json(raw["config"]),
        "includes_sam": json.loads(raw["includes_sam"]),
        "prompt_version": raw["prompt_version"],
        "prompt_mode": raw.get("prompt_mode") or None,
        "domain": raw.get("domain") or None,
        "extra": json.loads(raw["extra"]),
    }


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", sam_checkpoint: str | Path | None = None
) -> LSMSeg:
    """Rebuild the model from the metadata's config and load every weight (strictly)."""
    metadata = read_metadata(path)
    config: LSMSegConfig = metadata["config"]
    needs_sam_file = config.sam is not None and not metadata["includes_sam"]
    if needs_sam_file and sam_checkpoint is None:
        raise WeightsNotFoundError(
            f"checkpoint {path} does not contain the frozen SAM weights. {sam_missing_message(config.sam)}",
            "sam",
        )
    model = build_model(config, sam_checkpoint=sam_checkpoint if needs_sam_file else None)
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            state[key] = handle.get_tensor(key)
    if needs_sam_file:
        state.update({name: t for name, t in model.state_dict().items() if name.startswith(_SAM_PREFIX)})
    model.load_state_dict(state, strict=True)
    model.checkpoint_metadata = metadata
    return model.to(device).eval()
