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


# Across the whole bank --------------------------------------------------------------------------------------
VOCABULARY_FILES = sorted(VOCABULARIES.glob("*.json"))
# Words that only the template fallback or an unfinished entry would contain.
PLACEHOLDERS = ("a photo of", "{}", "todo", "tbd", "xxx", "lorem", "placeholder", "...", "<", ">")


def synonyms(name: str) -> set[str]:
    """The names a class goes by, spelled without separators: "building, edifice" -> {"building", "edifice"};
    "potted plant" and "pottedplant" (VOC and PASCAL-Context spellings) are one name."""
    return {re.sub(r"[^a-z0-9]+", "", part) for part in name.split(", ")}


@pytest.mark.parametrize("vocabulary", VOCABULARY_FILES, ids=[path.stem for path in VOCABULARY_FILES])
def test_every_vocabulary_has_a_descriptions_file(vocabulary):
    assert (DESCRIPTIONS / vocabulary.name).is_file(), f"{vocabulary.stem} has no descriptions file"


def test_no_sentence_is_shared_by_classes_with_different_names():
    owners: dict[str, set[str]] = {}
    for path in DESCRIPTION_FILES:
        for name, sentences in load(path)["descriptions"].items():
            for sentence in sentences:
                owners.setdefault(normalise(sentence), set()).add(name)
    shared = [
        (sorted(names), sentence[:60])
        for sentence, names in owners.items()
        if any(not synonyms(a) & synonyms(b) for a in names for b in names)
    ]
    assert not shared, f"sentences shared by differently named classes: {shared[:10]}"


def test_no_template_or_placeholder_text(bank_file):
    found = [
        (name, attribute, placeholder)
        for name, sentences in load(bank_file)["descriptions"].items()
        for attribute, sentence in zip(ATTRIBUTES, sentences, strict=False)
        for placeholder in PLACEHOLDERS
        if placeholder in sentence.lower()
    ]
    assert not found, f"template or placeholder text: {found[:10]}"


# The benchmarks' class lists in their index order (label value i of a dataset is classes[i]); the digests are
# those of CAT-Seg's datasets/ade847.json and pc459.json at commit 6d3a188, compared name for name.
BENCHMARK_LISTS = {
    "ade847": (847, "wall", "building, edifice", "adding machine, totalizer, totaliser", "ee311c5f3b780a16"),
    "pc459": (459, "accordion", "aeroplane", "wool", "f22a02ac1b8419bc"),
}


@pytest.mark.parametrize("vocabulary", sorted(BENCHMARK_LISTS))
def test_benchmark_lists_keep_their_index_order(vocabulary):
    import hashlib

    count, first, second, last, digest = BENCHMARK_LISTS[vocabulary]
    classes = load(VOCABULARIES / f"{vocabulary}.json")["classes"]
    assert (len(classes), classes[0], classes[1], classes[-1]) == (count, first, second, last)
    assert hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16] == digest
