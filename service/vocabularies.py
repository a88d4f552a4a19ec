"""Class lists of requests -> validated names, a content id and P prompts per class (memoised per id).

Besides what users register, the prompt bank's benchmark vocabularies (ade150, ade847, coco171, pc59, pc459,
voc20) are built in: usable by name, listed, never stored in Redis and never deleted.

Blocking (Redis, and an LLM when one is configured): call from a worker thread, not the event loop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prompt_cache import (
    Bank,
    NotFoundError,
    PromptBuilder,
    PromptSet,
    VocabRegistry,
    Vocabulary,
    validate_classes,
    vocab_id_for,
)
from service.errors import ApiError, unavailable

_PROMPT_SETS_KEPT = 256  # vocabularies whose prompts stay built (an 847-class set takes ~0.3 s to build)


@dataclass(frozen=True)
class ResolvedVocab:
    vocab_id: str
    name: str | None
    classes: list[str]  # normalised; label value i means classes[i]
    prompts: PromptSet


class Vocabularies:
    def __init__(self, registry: VocabRegistry, bank: Bank, max_classes: int, max_class_chars: int) -> None:
        self.registry = registry
        self.builtins = {
            name: Vocabulary(vocab_id_for(classes), name, tuple(classes), bank.prompt_version, created=0.0)
            for name in bank.vocabulary_names()
            if len(classes := bank.vocabulary(name)) <= max_classes
        }
        self.max_classes = max_classes
        self.max_class_chars = max_class_chars
        self.builder: PromptBuilder | None = None  # attached once the model (P, text fingerprint) is known
        self._prompt_sets: OrderedDict[str, PromptSet] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def inline(self, classes: Sequence[str]) -> ResolvedVocab:
        """A class list sent with the request; its id is the one POST /vocab would give it."""
        names = validate_classes(classes, self.max_classes, self.max_class_chars)
        vocab_id = vocab_id_for(names)
        return ResolvedVocab(vocab_id, None, names, self.prompts(vocab_id, names, None))

    def registered(self, id_or_name: str) -> ResolvedVocab:
        vocab, prompts = self.describe(id_or_name)
        return ResolvedVocab(vocab.vocab_id, vocab.name, list(vocab.classes), prompts)

    def describe(self, id_or_name: str) -> tuple[Vocabulary, PromptSet]:
        """A registered or built-in vocabulary and its prompts; NotFoundError (404) when unknown."""
        try:
            vocab = self.registry.get(id_or_name)
        except NotFoundError:
            vocab = self.builtins.get(id_or_name.strip())
            if vocab is None:
                raise
        return vocab, self.prompts(vocab.vocab_id, list(vocab.classes), vocab.descriptions)

    def all(self) -> list[Vocabulary]:
        """Built-in vocabularies (unless a registered one took the name), then registered ones by age."""
        registered = self.registry.list()
        taken = {vocab.name for vocab in registered}
        return [vocab for name, vocab in self.builtins.items() if name not in taken] + registered

    def delete(self, id_or_name: str) -> Vocabulary:
        try:
            return self.registry.delete(id_or_name)
        except NotFoundError:
            if id_or_name.strip() in self.builtins:
                message = f"{id_or_name!r} is built in and cannot be deleted"
                raise ApiError(409, "builtin_vocab", message) from None
            raise

    def register(
        self, classes: Sequence[str], name: str | None, descriptions: Mapping[str, Sequence[str]] | None
    ) -> tuple[Vocabulary, PromptSet]:
        # Prompts first: a class list the builder rejects is never stored.
        names = validate_classes(classes, self.max_classes, self.max_class_chars)
        built = self._builder().build(names, descriptions)
        vocab = self.registry.register(names, name, descriptions)
        self._remember(vocab.vocab_id, built)
        return vocab, built

    def prompts(
        self, vocab_id: str, classes: list[str], descriptions: Mapping[str, Sequence[str]] | None
    ) -> PromptSet:
        with self._lock:
            cached = self._prompt_sets.get(vocab_id)
            if cached is not None:
                self._prompt_sets.move_to_end(vocab_id)
                return cached
        built = self._builder().build(classes, descriptions)
        self._remember(vocab_id, built)
        return built

    def _remember(self, vocab_id: str, built: PromptSet) -> None:
        if built.llm_failures:  # classes the LLM failed on get another chance next time
            return
        with self._lock:
            self._prompt_sets[vocab_id] = built
            while len(self._prompt_sets) > _PROMPT_SETS_KEPT:
                self._prompt_sets.popitem(last=False)

    def _builder(self) -> PromptBuilder:
        if self.builder is None:
            raise unavailable("not_ready", "the model is still loading; retry shortly", 5.0)
        return self.builder
