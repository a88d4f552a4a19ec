"""PromptBuilder: class names -> exactly P prompt strings per class, each within CLIP's 77 tokens.

Where a class's sentences come from, first match wins:
  user      descriptions passed to build() (POST /vocab may carry them), in the order given
  bank      authored descriptions shipped in the package (ATTRIBUTES order: combined, size, shape, ...)
  llm       sentences an LLM wrote earlier (cached in the EmbeddingStore) or writes now, in ATTRIBUTES order
  template  TEMPLATES below (with the full class name, synonyms included), when nothing else has the
            class or the LLM failed or ran out of time
How P prompts are picked (deterministic): the source's sentences, followed by TEMPLATES, form one list; the
first P entries are taken, and if P is longer than that list it is repeated from its start. So P = 1 uses the
combined sentence, P = 5 the five attribute sentences, and P = 7 adds the first two templates.
Other prompt modes (prompt_cache.modes): "catseg" gives every class CAT-Seg's one template (source
"template"); "ensemble" keeps all of the source's sentences (the template source: the first five TEMPLATES)
for the encoder to average into one embedding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lsmseg.prompt_cache.llm import LLMAnswerError, LLMClient
from lsmseg.prompt_cache.modes import DEFAULT_PROMPT_MODE, catseg_prompt, check_prompt_mode
from lsmseg.prompt_cache.names import MAX_CLASSES, ClassList, validate_class_list
from lsmseg.prompt_cache.prompt_bank import ATTRIBUTES, Bank
from lsmseg.prompt_cache.tokens import truncate

if TYPE_CHECKING:
    from lsmseg.prompt_cache.store import EmbeddingStore

logger = logging.getLogger(__name__)

SOURCES = ("user", "bank", "llm", "template")

# Ordered like ATTRIBUTES (combined, size, shape, texture, colour), then generic CLIP-style extras.
TEMPLATES = (
    "a photo of a {}.",
    "a photo of a {}, showing its size.",
    "a photo of a {}, showing its shape.",
    "a photo of a {}, showing its texture.",
    "a photo of a {}, showing its colour.",
    "a close-up photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
)


@dataclass(frozen=True)
class PromptSet:
    """What build() made: prompts[i] are the P prompts of classes[i] (in ensemble mode: the sentences
    averaged into its one embedding), taken from sources[i]."""

    classes: list[str]
    prompts: list[list[str]]
    sources: list[str]
    llm_failures: dict[str, str] = field(default_factory=dict)  # class -> why its LLM sentences are missing
    truncated: int = 0  # prompts shortened to fit 77 tokens

    @property
    def counts(self) -> dict[str, int]:
        """Classes per source, every source present: {"user": n, "bank": n, "llm": n, "template": n}."""
        tally = Counter(self.sources)
        return {source: tally[source] for source in SOURCES}


def pick_prompts(name: str, sentences: Sequence[str], count: int) -> list[str]:
    """`count` prompts: the sentences, then TEMPLATES, repeated from the start when `count` is longer."""
    # The full name, synonyms included: ADE-847 has classes that share their first synonym.
    candidates = [*sentences, *(template.format(name) for template in TEMPLATES)]
    return [candidates[index % len(candidates)] for index in range(count)]


class PromptBuilder:
    """Turns class names into P prompts each; LLM failures fall back to templates and are reported."""

    def __init__(
        self,
        bank: Bank,
        llm: LLMClient | None = None,
        prompts_per_class: int = 1,
        *,
        mode: str = DEFAULT_PROMPT_MODE,
        store: EmbeddingStore | None = None,
        llm_workers: int = 4,
        llm_budget_s: float | None = None,
        max_classes: int = MAX_CLASSES,
    ) -> None:
        if prompts_per_class < 1:
            raise ValueError("prompts_per_class must be at least 1")
        check_prompt_mode(mode, prompts_per_class)
        if store is not None and store.prompt_version != bank.prompt_version:
            raise ValueError(
                f"the store caches descriptions of prompt version {store.prompt_version!r}, "
                f"the bank is {bank.prompt_version!r}"
            )
        self.bank = bank
        self.llm = llm
        self.prompts_per_class = prompts_per_class
        self.mode = mode
        self.store = store
        self.llm_workers = llm_workers
        self.llm_budget_s = llm_budget_s  # per build(): classes not asked by then get templates
        self.max_classes = max_classes

    def build(
        self, names: Sequence[str] | ClassList, descriptions: Mapping[str, Sequence[str]] | None = None
    ) -> PromptSet:
        """P prompts for every class; raises ValidationError only for bad input, never for an LLM problem.
        A ClassList is taken as validated (its descriptions are the user's; `descriptions` is ignored)."""
        if isinstance(names, ClassList):
            checked = names
        else:
            checked = validate_class_list(names, descriptions, self.max_classes)
        classes = list(checked.names)
        if self.mode == "catseg":
            # CAT-Seg's checkpoints know their one template only: no sentences are looked for.
            prompts = [[catseg_prompt(name)] for name in classes]
            return _prompt_set(classes, prompts, ["template"] * len(classes))
        chosen = {name: ("user", sentences) for name, sentences in (checked.descriptions or {}).items()}
        for name in classes:
            authored = self.bank.descriptions(name)
            if name not in chosen and authored is not None:
                chosen[name] = ("bank", authored)
        failures: dict[str, str] = {}
        unknown = [name for name in classes if name not in chosen]
        if unknown and self.store is not None:
            for name, sentences in self.store.get_descriptions(unknown).items():
                chosen[name] = ("llm", sentences)
            unknown = [name for name in unknown if name not in chosen]
        if unknown and self.llm is not None:
            written, failures = self._ask_llm(self.llm, unknown)
            for name, sentences in written.items():
                chosen[name] = ("llm", sentences)
            if written and self.store is not None:
                self.store.put_descriptions(written)
        wanted, sources = [], []
        for name in classes:
            source, sentences = chosen.get(name, ("template", []))
            wanted.append(self._prompts_for(name, sentences))
            sources.append(source)
        return _prompt_set(classes, wanted, sources, failures)

    def _prompts_for(self, name: str, sentences: Sequence[str]) -> list[str]:
        if self.mode == "ensemble":
            return list(sentences) or pick_prompts(name, [], len(ATTRIBUTES))
        return pick_prompts(name, sentences, self.prompts_per_class)

    def _ask_llm(self, llm: LLMClient, names: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Ask the LLM in parallel; after a failure other than a bad answer, stop asking for this request."""
        give_up = threading.Event()
        deadline = None if self.llm_budget_s is None else time.monotonic() + self.llm_budget_s

        def ask(name: str) -> tuple[str, list[str] | None, str | None]:
            if give_up.is_set():
                return name, None, "not asked: the LLM failed earlier in this request"
            if deadline is not None and time.monotonic() > deadline:
                return name, None, f"not asked: the LLM time budget of {self.llm_budget_s} s was used up"
            try:
                return name, llm.describe(name), None
            except LLMAnswerError as exc:
                return name, None, str(exc)
            except Exception as exc:  # an LLM problem must never fail the caller's request
                give_up.set()
                return name, None, f"{type(exc).__name__}: {exc}"

        written, failures = {}, {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.llm_workers, len(names)))) as pool:
            for name, sentences, error in pool.map(ask, names):
                if sentences is not None:
                    written[name] = sentences
                else:
                    failures[name] = error or "no answer"
        if failures:
            logger.warning(
                "LLM descriptions missing for %d of %d classes (templates used); first: %s",
                len(failures), len(names), next(iter(failures.values())),
            )
        return written, failures


def _prompt_set(
    classes: list[str], wanted: list[list[str]], sources: list[str], failures: dict[str, str] | None = None
) -> PromptSet:
    """The PromptSet of these prompts, each cut to CLIP's 77 tokens (and the cuts counted)."""
    prompts = [[truncate(prompt) for prompt in group] for group in wanted]
    truncated = sum(
        kept != prompt
        for kept_group, group in zip(prompts, wanted, strict=True)
        for kept, prompt in zip(kept_group, group, strict=True)
    )
    return PromptSet(classes, prompts, sources, failures or {}, truncated)
