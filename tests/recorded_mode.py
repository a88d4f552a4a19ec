"""Checkpoints that record a prompt mode, as the CAT-Seg importer writes them."""

from __future__ import annotations

from pathlib import Path

from model import LSMSeg, save_checkpoint


def save_with_prompt_mode(model: LSMSeg, path: Path, mode: str) -> Path:
    """A checkpoint recording `mode`. It travels in save_checkpoint's `extra`, where
    prompt_cache.modes.recorded_prompt_mode finds it until read_metadata returns the key itself."""
    return save_checkpoint(model, path, {"prompt_mode": mode})
