"""The authored prompt bank: benchmark vocabularies and attribute descriptions shipped inside the package.

Layout (package data under ``prompt_cache/bank/``):
  vocabularies/{name}.json   {"name", "title", "source", "classes": [...]} in the dataset's index order
  descriptions/{name}.json   {"prompt_version", "attributes", "descriptions": {normalised class: [sentences]}}
with one sentence per attribute, in ATTRIBUTES order (the paper's winning attributes after the combined one).
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from lsmseg.prompt_cache.errors import BankError, NotFoundError
from lsmseg.prompt_cache.names import normalise_name

ATTRIBUTES = ("combined", "size", "shape", "texture", "colour")
# Bump when ATTRIBUTES or the LLM request change: cached LLM descriptions are keyed by it.
PROMPT_VERSION = "attr-v1"


class Bank:
    """Vocabularies by name and descriptions by normalised class name, loaded once from JSON files."""

    def __init__(self, root: Traversable | Path | None = None) -> None:
        self.root = root if root is not None else resources.files("lsmseg.prompt_cache") / "bank"
        self._vocabularies = _load_vocabularies(self.root / "vocabularies")
        self.prompt_version = PROMPT_VERSION
        self._descriptions = _load_descriptions(self.root / "descriptions")

    def vocabulary_names(self) -> list[str]:
        return sorted(self._vocabularies)

    def vocabulary(self, name: str) -> list[str]:
        """Normalised class names of a known vocabulary, in its standard index order."""
        if name not in self._vocabularies:
            raise NotFoundError(f"unknown vocabulary {name!r}; known: {', '.join(self.vocabulary_names())}")
        return list(self._vocabularies[name])

    def descriptions(self, class_name: str) -> list[str] | None:
        """The authored sentences (ATTRIBUTES order) for a class, or None when the bank has none."""
        found = self._descriptions.get(normalise_name(class_name))
        return list(found) if found is not None else None

    def __contains__(self, class_name: str) -> bool:
        return normalise_name(class_name) in self._descriptions

    def description_path(self, vocabulary: str) -> Traversable | Path:
        """Where the descriptions file of a vocabulary lives (the CLI writes it there by default)."""
        return self.root / "descriptions" / f"{vocabulary}.json"


def _load_vocabularies(folder: Traversable | Path) -> dict[str, tuple[str, ...]]:
    vocabularies = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".json"):
            continue
        data = _read_json(entry)
        classes = data.get("classes")
        if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
            raise BankError(f"{entry.name}: 'classes' must be a list of strings")
        vocabularies[entry.name.removesuffix(".json")] = tuple(normalise_name(name) for name in classes)
    return vocabularies


def _load_descriptions(folder: Traversable | Path) -> dict[str, tuple[str, ...]]:
    """Merge every descriptions file; the first file (by name) that describes a class wins."""
    merged: dict[str, tuple[str, ...]] = {}
    if not folder.is_dir():
        return merged
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".json"):
            continue
        data = _read_json(entry)
        if data.get("prompt_version") != PROMPT_VERSION or tuple(data.get("attributes", ())) != ATTRIBUTES:
            raise BankError(
                f"{entry.name}: expected prompt_version {PROMPT_VERSION!r} and attributes "
                f"{list(ATTRIBUTES)}, found {data.get('prompt_version')!r} and {data.get('attributes')}"
            )
        for raw_name, sentences in data.get("descriptions", {}).items():
            if (
                not isinstance(sentences, list)
                or len(sentences) != len(ATTRIBUTES)
                or not all(isinstance(sentence, str) and sentence.strip() for sentence in sentences)
            ):
                raise BankError(
                    f"{entry.name}: {raw_name!r} needs exactly {len(ATTRIBUTES)} non-empty sentences "
                    f"({', '.join(ATTRIBUTES)})"
                )
            merged.setdefault(normalise_name(raw_name), tuple(" ".join(s.split()) for s in sentences))
    return merged


def _read_json(entry: Traversable | Path) -> dict:
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BankError(f"{entry.name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BankError(f"{entry.name} must hold a JSON object")
    return data
