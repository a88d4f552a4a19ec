"""Benchmark class lists, read from the JSON files shipped in prompt_cache/bank/vocabularies/."""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path


def vocabulary_dir() -> Path:
    # find_spec locates the package without importing it: prompt_cache/__init__ pulls in Redis clients etc.
    spec = importlib.util.find_spec("lsmseg.prompt_cache")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("package prompt_cache (part of lsmseg) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bank" / "vocabularies"


@cache
def _load(name: str) -> tuple[str, ...]:
    path = vocabulary_dir() / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in vocabulary_dir().glob("*.json"))
        raise KeyError(f"no vocabulary {name!r} in {path.parent}; known: {known}")
    return tuple(json.loads(path.read_text())["classes"])


def load_classes(name: str) -> list[str]:
    """Class names of a benchmark (coco171, ade150, ade847, pc59, pc459, voc20); index == label id."""
    return list(_load(name))
