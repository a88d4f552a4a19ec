"""Class prompts for training and evaluation, through the same PromptBuilder the service uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prompt_cache import Bank, LLMClient, PromptBuilder
from prompt_cache.names import normalise_name
from prompt_cache.prompts import pick_prompts

PROMPT_SOURCES = ("bank", "template")


def class_prompts(
    names: Sequence[str],
    prompts_per_class: int,
    source: str = "bank",
    descriptions: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[list[str]], dict[str, int]]:
    """P prompts per class and how many classes each source supplied.

    "bank": given descriptions, the authored bank, an LLM (when LSMSEG_LLM_URL is set), then templates.
    "template": the plain "a photo of a {}." family only (the paper's hand-crafted baseline, Table 2).
    """
    if source == "template":
        prompts = [pick_prompts(normalise_name(name), [], prompts_per_class) for name in names]
        return prompts, {"template": len(prompts)}
    if source != "bank":
        raise ValueError(f"prompt source must be one of {PROMPT_SOURCES}, got {source!r}")
    builder = PromptBuilder(Bank(), LLMClient.from_env(), prompts_per_class)
    built = builder.build(list(names), descriptions)
    return built.prompts, built.counts


def dataset_descriptions(dataset: Any) -> Mapping[str, Sequence[str]] | None:
    """Class descriptions a dataset ships itself (the synthetic scenes do), used like user descriptions."""
    return getattr(dataset, "descriptions", None)
