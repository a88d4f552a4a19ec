"""Prompt modes: how a class name becomes the text embedding(s) the model compares with the image.

  attributes  P prompts per class from the class's sentences (user -> bank -> llm -> template), each its own
              cost-map channel: LSMSeg's own models (prompt_cache.prompts).
  catseg      CAT-Seg's single template around the name's first synonym, P = 1: what the released CAT-Seg
              checkpoints were trained with. Descriptions, the bank and the LLM are not used.
  ensemble    P = 1: the class's sentences (as in attributes) are each encoded, L2-normalised, averaged and
              re-normalised into one embedding (CuPL-style), so the bank's descriptions serve single-prompt
              models such as imported CAT-Seg checkpoints.
A checkpoint records its mode; LSMSEG_PROMPT_MODE / --prompt-mode override it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

PROMPT_MODES = ("attributes", "catseg", "ensemble")
SINGLE_PROMPT_MODES = ("catseg", "ensemble")
DEFAULT_PROMPT_MODE = "attributes"
CATSEG_TEMPLATE = "A photo of a {} in the scene"  # CAT-Seg's PROMPT_ENSEMBLE_TYPE "single"

EncodeFn = Callable[[list[list[str]]], torch.Tensor]  # C lists of prompts -> C×P×D


def catseg_class_name(name: str) -> str:
    """What CAT-Seg puts into its template: the name up to its first ', ' (ADE-847 lists synonyms so).
    Unlike names.first_synonym, a comma that no space follows does not split, and nothing is stripped."""
    return name.split(", ")[0]


def catseg_prompt(name: str) -> str:
    return CATSEG_TEMPLATE.format(catseg_class_name(name))


def check_prompt_mode(mode: str, prompts_per_class: int) -> None:
    """ValueError, saying what to change, for an unknown mode or a one-embedding mode with P ≠ 1."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; known: {', '.join(PROMPT_MODES)}")
    if mode in SINGLE_PROMPT_MODES and prompts_per_class != 1:
        raise ValueError(
            f"prompt mode {mode!r} gives one embedding per class, but this model takes "
            f"{prompts_per_class} prompts per class (P = {prompts_per_class}); use prompt mode 'attributes'"
        )


def recorded_prompt_mode(metadata: Mapping[str, Any]) -> str:
    """The prompt mode a checkpoint's metadata (model.read_metadata's dict) records; 'attributes' (LSMSeg's
    own prompts) for checkpoints that do not say, which all checkpoints written before the field were."""
    return metadata.get("prompt_mode") or DEFAULT_PROMPT_MODE


def resolve_prompt_mode(recorded: str, override: str | None, prompts_per_class: int) -> str:
    """The mode to run: the override when given, else the recorded one; checked against the model's P."""
    mode = override or recorded
    check_prompt_mode(mode, prompts_per_class)
    return mode


def ensemble_encoder(encode_fn: EncodeFn) -> EncodeFn:
    """A one-prompt-per-class encoder turned into the ensemble's: C lists of any number of sentences ->
    C×1×D, each class the re-normalised mean of its sentences' L2-normalised embeddings."""

    def encode(prompt_lists: list[list[str]]) -> torch.Tensor:
        counts = [len(group) for group in prompt_lists]
        if not counts or min(counts) == 0:
            raise ValueError("every class needs at least one sentence to average")
        embeddings = encode_fn([[sentence] for group in prompt_lists for sentence in group])[:, 0]
        embeddings = F.normalize(embeddings, dim=-1)
        owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(embeddings.device)
        sums = embeddings.new_zeros(len(counts), embeddings.shape[-1]).index_add_(0, owner, embeddings)
        means = sums / torch.tensor(counts, dtype=sums.dtype, device=sums.device)[:, None]
        return F.normalize(means, dim=-1)[:, None]

    return encode


def class_encoder(mode: str, encode_fn: EncodeFn) -> EncodeFn:
    """What turns a PromptSet's prompt lists into the model's C×P×D text for `mode`."""
    return ensemble_encoder(encode_fn) if mode == "ensemble" else encode_fn
