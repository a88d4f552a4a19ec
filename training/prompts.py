"""Class prompts for training and evaluation, through the same PromptBuilder the service uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lsmseg.prompt_cache import ATTRIBUTES, Bank, LLMClient, PromptBuilder
from lsmseg.prompt_cache.modes import DEFAULT_PROMPT_MODE, check_prompt_mode
from lsmseg.prompt_cache.names import normalise_name
from lsmseg.prompt_cache.prompts import pick_prompts

PROMPT_SOURCES = ("bank", "template")


def class_prompts(
    names: Sequence[str],
    prompts_per_class: int,
    source: str = "bank",
    descriptions: Mapping[str, Sequence[str]] | None = None,
    mode: str = DEFAULT_PROMPT_MODE,
) -> tuple[list[list[str]], dict[str, int]]:
    """P prompts per class (in ensemble mode: the sentences to average) and how many classes each source
    supplied. `mode` is a prompt_cache.modes mode; "catseg" uses CAT-Seg's template whatever the source.

    "bank": given descriptions, the authored bank, an LLM (when LSMSEG_LLM_URL is set), then templates.
    "template": the plain "a photo of a {}." family only (the paper's hand-crafted baseline, Table 2).
    """
    if source not in PROMPT_SOURCES:
        raise ValueError(f"prompt source must be one of {PROMPT_SOURCES}, got {source!r}")
    check_prompt_mode(mode, prompts_per_class)
    if source == "template" and mode != "catseg":
        # The ensemble averages the five attribute-ordered templates, as its own template fallback does.
        count = len(ATTRIBUTES) if mode == "ensemble" else prompts_per_class
        prompts = [pick_prompts(normalise_name(name), [], count) for name in names]
        return prompts, {"template": len(prompts)}
    builder = PromptBuilder(Bank(), LLMClient.from_env(), prompts_per_class, mode=mode)
    built = builder.build(list(names), descriptions)
    return built.prompts, built.counts


def dataset_descriptions(dataset: Any) -> Mapping[str, Sequence[str]] | None:
    """Class descriptions a dataset ships itself (the synthetic scenes do), used like user descriptions."""
    return getattr(dataset, "descriptions", None)
