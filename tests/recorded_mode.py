"""Checkpoints that record a prompt mode, as the CAT-Seg importer writes them."""

from __future__ import annotations

from pathlib import Path

from lsmseg.model import LSMSeg, save_checkpoint


def save_with_prompt_mode(model: LSMSeg, path: Path, mode: str) -> Path:
    """A checkpoint recording `mode`, as lsmseg-import and lsmseg-train write it."""
    return save_checkpoint(model, path, prompt_mode=mode)
