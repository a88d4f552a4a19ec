"""Bank loading, PromptBuilder source order and P handling, 77-token truncation (no LLM, no Redis)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsmseg.prompt_cache import (
    ATTRIBUTES,
    PROMPT_VERSION,
    TEMPLATES,
    Bank,
    BankError,
    NotFoundError,
    PromptBuilder,
    ValidationError,
    token_count,
    truncate,
)

CAT = [
    "A cat is small and agile with a long tail, soft fur and is often black, white, orange or gray.",
    "A cat is small to medium-sized, weighing between 3 and 7 kg.",
    "A cat has a sleek body, a long tail and pointed ears.",
    "A cat has soft, fluffy fur.",
    "A cat is often black, white, orange, or gray.",
]


def write_bank(root: Path, descriptions: dict[str, list[str]], **overrides: object) -> Path:
    (root / "vocabularies").mkdir(parents=True)
    (root / "descriptions").mkdir()
    vocab = {"name": "pets", "title": "Pets", "source": "test", "classes": ["cat", "Dog ", "car, auto"]}
    (root / "vocabularies" / "pets.json").write_text(json.dumps(vocab))
    document = {
        "prompt_version": PROMPT_VERSION,
        "attributes": list(ATTRIBUTES),
        "descriptions": descriptions,
        **overrides,
    }
    (root / "descriptions" / "pets.json").write_text(json.dumps(document))
    return root


@pytest.fixture
def bank(tmp_path: Path) -> Bank:
    return Bank(write_bank(tmp_path, {"Cat": CAT}))


def test_packaged_bank_has_the_benchmark_vocabularies() -> None:
    bank = Bank()
    sizes = {name: len(bank.vocabulary(name)) for name in bank.vocabulary_names()}
    assert sizes == {"ade150": 150, "ade847": 847, "coco171": 171, "pc459": 459, "pc59": 59, "voc20": 20}
    ade150 = bank.vocabulary("ade150")
    assert ade150[:3] == ["wall", "building", "sky"]
    assert "bed" in ade150  # the source file has "bed " with a stray space
    assert bank.vocabulary("ade847")[1] == "building, edifice"
    assert bank.prompt_version == PROMPT_VERSION
    with pytest.raises(NotFoundError, match="unknown vocabulary 'ade999'; known: ade150, ade847"):
        bank.vocabulary("ade999")


def test_packaged_descriptions_fit_the_clip_context() -> None:
    bank = Bank()
    too_long = []
    for vocabulary in bank.vocabulary_names():
        for name in bank.vocabulary(vocabulary):
            for sentence in bank.descriptions(name) or []:
                if token_count(sentence) > 77:
                    too_long.append((name, token_count(sentence)))
    assert too_long == []


def test_bank_lookup_normalises_names(bank: Bank) -> None:
    assert bank.descriptions("  CAT ") == CAT
    assert "cat" in bank
    assert bank.descriptions("dog") is None
    assert bank.vocabulary("pets") == ["cat", "dog", "car, auto"]


def test_malformed_bank_file_names_the_file_and_class(tmp_path: Path) -> None:
    write_bank(tmp_path, {"cat": CAT[:3]})
    with pytest.raises(BankError, match=r"pets.json: 'cat' needs exactly 5 non-empty sentences"):
        Bank(tmp_path)


def test_bank_rejects_another_prompt_version(tmp_path: Path) -> None:
    write_bank(tmp_path, {}, prompt_version="attr-v0")
    with pytest.raises(BankError, match="expected prompt_version 'attr-v1'"):
        Bank(tmp_path)


def test_one_prompt_is_the_combined_sentence(bank: Bank) -> None:
    result = PromptBuilder(bank, prompts_per_class=1).build(["cat", "Dog"])
    assert result.classes == ["cat", "dog"]
    assert result.prompts == [[CAT[0]], ["a photo of a dog."]]
    assert result.sources == ["bank", "template"]
    assert result.counts == {"user": 0, "bank": 1, "llm": 0, "template": 1}
    assert result.llm_failures == {}


def test_p_prompts_take_attributes_in_order_then_templates_then_repeat(bank: Bank) -> None:
    assert PromptBuilder(bank, prompts_per_class=3).build(["cat"]).prompts == [CAT[:3]]
    assert PromptBuilder(bank, prompts_per_class=5).build(["cat"]).prompts == [CAT]
    seven = PromptBuilder(bank, prompts_per_class=7).build(["cat"]).prompts[0]
    assert seven == [*CAT, "a photo of a cat.", "a photo of a cat, showing its size."]
    many = PromptBuilder(bank, prompts_per_class=15).build(["cat"]).prompts[0]
    assert len(many) == 15
    assert many[13:] == CAT[:2]  # 5 sentences + 8 templates, then from the start again


def test_template_fallback_keeps_synonyms_and_is_deterministic(bank: Bank) -> None:
    builder = PromptBuilder(bank, prompts_per_class=len(TEMPLATES) + 1)
    first = builder.build(["car, auto"])
    assert first.prompts[0][:2] == ["a photo of a car, auto.", "a photo of a car, auto, showing its size."]
    assert first.prompts[0][-1] == "a photo of a car, auto."
    assert builder.build(["car, auto"]).prompts == first.prompts
    # ADE-847 has "pot, flowerpot" and "pot": they must not get the same prompts.
    pots = builder.build(["pot, flowerpot", "pot"]).prompts
    assert pots[0] != pots[1]


def test_user_descriptions_come_first(bank: Bank) -> None:
    mine = {"CAT": ["a very fat cat asleep on a sofa."], "dog": ["a wet dog.", "a dog's nose."]}
    result = PromptBuilder(bank, prompts_per_class=2).build(["cat", "dog", "car, auto"], descriptions=mine)
    assert result.prompts == [
        ["a very fat cat asleep on a sofa.", "a photo of a cat."],
        ["a wet dog.", "a dog's nose."],
        ["a photo of a car, auto.", "a photo of a car, auto, showing its size."],
    ]
    assert result.counts == {"user": 2, "bank": 0, "llm": 0, "template": 1}


def test_bad_user_input_is_a_validation_error(bank: Bank) -> None:
    builder = PromptBuilder(bank)
    with pytest.raises(ValidationError, match="'horse', which is not in the class list"):
        builder.build(["cat"], descriptions={"horse": ["a horse."]})
    with pytest.raises(ValidationError, match="empty or non-text entry"):
        builder.build(["cat"], descriptions={"cat": ["  "]})
    with pytest.raises(ValidationError, match="the class list is empty"):
        builder.build([])
    with pytest.raises(ValidationError, match="duplicate classes after normalisation"):
        builder.build(["cat", " Cat"])


def test_long_sentences_are_cut_at_a_word_to_77_tokens(tmp_path: Path) -> None:
    long_sentence = "A cat " + " ".join(f"with whisker number {index}" for index in range(60)) + "."
    assert token_count(long_sentence) > 77
    bank = Bank(write_bank(tmp_path, {"cat": [long_sentence, *CAT[1:]]}))
    result = PromptBuilder(bank, prompts_per_class=2).build(["cat"])
    cut = result.prompts[0][0]
    assert token_count(cut) <= 77
    assert token_count(cut) >= 73  # cut at the last whole word, not far earlier
    assert long_sentence.startswith(cut)
    assert result.prompts[0][1] == CAT[1]
    assert result.truncated == 1


def test_truncate_leaves_short_text_alone_and_handles_one_giant_word() -> None:
    assert truncate("a photo of a cat.") == "a photo of a cat."
    giant = truncate("x" * 2000)
    assert 0 < token_count(giant) <= 77
