"""Checks on the attribute-description bank (prompt_cache/bank/descriptions/*.json).

Every descriptions file is tested against the vocabulary of the same stem in bank/vocabularies: one
entry per class under its normalised name, five non-empty sentences per class (combined, size, shape,
texture, colour), each within the 77-token CLIP context and naming its class.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BANK = Path(__file__).resolve().parents[1] / "prompt_cache" / "bank"
DESCRIPTIONS = BANK / "descriptions"
VOCABULARIES = BANK / "vocabularies"
DESCRIPTION_FILES = sorted(DESCRIPTIONS.glob("*.json"))

ATTRIBUTES = ["combined", "size", "shape", "texture", "colour"]
CONTEXT_LENGTH = 77  # CLIP text context, start and end tokens included
EOT_ID = 49407
# Words of a class name too generic to show that a sentence is about that class.
GENERIC_WORDS = {"other", "stuff"}


def normalise(name: str) -> str:
    return " ".join(name.strip().lower().split())


def load(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def class_names(desc_path: Path) -> list[str]:
    vocab_path = VOCABULARIES / desc_path.name
    assert vocab_path.is_file(), f"no vocabulary {vocab_path.name} for descriptions file {desc_path.name}"
    return [normalise(name) for name in load(vocab_path)["classes"]]


def name_keys(name: str) -> list[str]:
    """Letter-only keys of a class name; a sentence mentions the class if it contains one of them.

    Words shorter than 3 letters are used only when the name has no longer word ("tv"); up to two
    trailing letters are dropped so that plurals and singulars both match ("knife"/"knives",
    "stairs"/"stair"), and the whole name without separators is a key too ("playingfield" matches
    "playing field").
    """
    words = [word for word in re.split(r"[^a-z]+", name.lower()) if word and word not in GENERIC_WORDS]
    long_words = [word for word in words if len(word) >= 3]
    keys = {word[: max(3, len(word) - 2)] for word in long_words} or set(words)
    joined = "".join(words)
    if joined:
        keys.add(joined[: max(3, len(joined) - 2)] if len(joined) >= 3 else joined)
    return sorted(keys)


def mentions(sentence: str, name: str) -> bool:
    letters = re.sub(r"[^a-z]+", "", sentence.lower())
    return any(key in letters for key in name_keys(name))


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip  # heavy (imports torch): load once per module

    return open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(params=DESCRIPTION_FILES, ids=[path.stem for path in DESCRIPTION_FILES])
def bank_file(request) -> Path:
    return request.param


def test_there_are_description_files():
    assert DESCRIPTION_FILES, f"no descriptions in {DESCRIPTIONS}"


def test_header(bank_file):
    data = load(bank_file)
    assert isinstance(data.get("prompt_version"), str)
    assert data["prompt_version"].strip()
    assert data.get("attributes") == ATTRIBUTES
    assert isinstance(data.get("descriptions"), dict)


def test_covers_vocabulary_exactly(bank_file):
    descriptions = load(bank_file)["descriptions"]
    names = class_names(bank_file)
    missing = [name for name in names if name not in descriptions]
    extra = sorted(set(descriptions) - set(names))
    assert not missing, f"{len(missing)} classes without descriptions: {missing[:20]}"
    assert not extra, f"keys that are not normalised vocabulary names: {extra[:20]}"


def test_five_non_empty_sentences(bank_file):
    bad = {
        name: sentences
        for name, sentences in load(bank_file)["descriptions"].items()
        if not (
            isinstance(sentences, list)
            and len(sentences) == len(ATTRIBUTES)
            and all(isinstance(s, str) and s.strip() for s in sentences)
        )
    }
    assert not bad, f"entries that are not {len(ATTRIBUTES)} non-empty strings: {list(bad)[:20]}"


def test_sentences_fit_clip_context(bank_file, tokenizer):
    entries = [
        (name, attribute, sentence)
        for name, sentences in load(bank_file)["descriptions"].items()
        for attribute, sentence in zip(ATTRIBUTES, sentences, strict=False)
    ]
    assert entries, "no sentences"
    too_long = []
    for name, attribute, sentence in entries:
        # Count without the tokenizer's truncation, which would hide an overlong sentence.
        n_tokens = len(tokenizer.encode(sentence)) + 2
        if n_tokens > CONTEXT_LENGTH:
            too_long.append((name, attribute, n_tokens))
    assert not too_long, f"sentences over {CONTEXT_LENGTH} CLIP tokens: {too_long[:20]}"
    ids = tokenizer([sentence for _, _, sentence in entries])
    lengths = (ids != 0).sum(dim=1)
    last = ids.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    assert bool((last == EOT_ID).all()), "a tokenized sentence does not end with the end-of-text token"


def test_combined_sentences_are_distinct(bank_file):
    seen: dict[str, str] = {}
    duplicates = []
    for name, sentences in load(bank_file)["descriptions"].items():
        combined = normalise(sentences[0])
        if combined in seen:
            duplicates.append((seen[combined], name))
        seen.setdefault(combined, name)
    assert not duplicates, f"classes sharing a combined sentence: {duplicates[:20]}"


def test_sentences_name_their_class(bank_file):
    unnamed = [
        (name, attribute)
        for name, sentences in load(bank_file)["descriptions"].items()
        for attribute, sentence in zip(ATTRIBUTES, sentences, strict=False)
        if not mentions(sentence, name)
    ]
    assert not unnamed, f"sentences that do not mention their class: {unnamed[:20]}"


@pytest.mark.parametrize(
    ("sentence", "name", "expected"),
    [
        ("A TV is a flat, black rectangle.", "tv", True),
        ("A playing field is a wide, flat area.", "playingfield", True),
        ("Knives have a narrow blade.", "knife", True),
        ("A wall made of brick shows rows of blocks.", "wall-brick", True),
        ("A wall made of plaster is flat.", "wall-other", True),
        ("A dog has four legs.", "cat", False),
    ],
)
def test_mentions(sentence, name, expected):
    assert mentions(sentence, name) is expected
