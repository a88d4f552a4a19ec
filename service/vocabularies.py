"""Class lists of requests -> validated names, a content id and P prompts per class (memoised per id).

Besides what users register, the prompt bank's benchmark vocabularies (ade150, ade847, coco171, pc59, pc459,
voc20) are built in: usable by name, listed first, never stored in Redis; their names are reserved and they
cannot be deleted (BuiltinVocabulary).

Blocking (Redis, and an LLM when one is configured): call from a worker thread, not the event loop.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lsmseg.prompt_cache import Bank, PromptBuilder, PromptSet, VocabRegistry, Vocabulary, vocab_id_for
from lsmseg.prompt_cache.names import ClassList, validate_class_list
from lsmseg.service.exceptions import BuiltinVocabulary, NotReady

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
        self.bank = bank
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

    def inline(
        self, classes: Sequence[str], before_building: Callable[[list[str]], None] | None = None
    ) -> ResolvedVocab:
        """A class list sent with the request; its id is the one POST /vocab would give it.
        `before_building(names the bank lacks)` runs before prompts are built for a list not seen lately
        (it may refuse: building ~1000 new names' prompts takes a worker thread ~0.2 s)."""
        checked = validate_class_list(classes, None, self.max_classes, self.max_class_chars)
        vocab_id = vocab_id_for(checked.names)
        if before_building is not None and vocab_id not in self._prompt_sets:
            before_building([name for name in checked.names if name not in self.bank])
        return ResolvedVocab(vocab_id, None, list(checked.names), self.prompts(vocab_id, checked))

    def registered(self, id_or_name: str) -> ResolvedVocab:
        vocab, prompts = self.describe(id_or_name)
        return ResolvedVocab(vocab.vocab_id, vocab.name, list(vocab.classes), prompts)

    def describe(self, id_or_name: str) -> tuple[Vocabulary, PromptSet]:
        """A built-in or registered vocabulary and its prompts; NotFoundError (404) when unknown."""
        vocab = self.builtins.get(id_or_name.strip()) or self.registry.get(id_or_name)
        trusted = ClassList(vocab.classes, vocab.descriptions)  # validated when it was registered
        return vocab, self.prompts(vocab.vocab_id, trusted)

    def page(self, offset: int, limit: int) -> tuple[list[Vocabulary], int]:
        """Built-in vocabularies, then registered ones by age: `limit` from `offset`, and the total."""
        builtins = list(self.builtins.values())
        shown = builtins[offset : offset + limit]
        registered_offset = max(0, offset - len(builtins))
        registered, count = self.registry.page(registered_offset, limit - len(shown))
        return shown + registered, len(builtins) + count

    def delete(self, id_or_name: str) -> Vocabulary:
        self._refuse_builtin(id_or_name, "is built in and cannot be deleted")
        return self.registry.delete(id_or_name)

    def register(
        self, classes: Sequence[str], name: str | None, descriptions: Mapping[str, Sequence[str]] | None
    ) -> tuple[Vocabulary, PromptSet]:
        if name is not None:
            self._refuse_builtin(name, "is the name of a built-in vocabulary; choose another name")
        checked = validate_class_list(classes, descriptions, self.max_classes, self.max_class_chars)
        # Prompts first: a class list the builder rejects is never stored.
        built = self._builder().build(checked)
        vocab = self.registry.register(checked, name)
        self._remember(vocab.vocab_id, built)
        return vocab, built

    def prompts(self, vocab_id: str, classes: ClassList) -> PromptSet:
        with self._lock:
            cached = self._prompt_sets.get(vocab_id)
            if cached is not None:
                self._prompt_sets.move_to_end(vocab_id)
                return cached
        built = self._builder().build(classes)
        self._remember(vocab_id, built)
        return built

    def _refuse_builtin(self, name: str, why: str) -> None:
        if name.strip() in self.builtins:
            raise BuiltinVocabulary(f"{name.strip()!r} {why}")

    def _remember(self, vocab_id: str, built: PromptSet) -> None:
        if built.llm_failures:  # classes the LLM failed on get another chance next time
            return
        with self._lock:
            self._prompt_sets[vocab_id] = built
            while len(self._prompt_sets) > _PROMPT_SETS_KEPT:
                self._prompt_sets.popitem(last=False)

    def _builder(self) -> PromptBuilder:
        if self.builder is None:
            raise NotReady()
        return self.builder
