"""Prompt modes: CAT-Seg's template, the ensemble's averaged embedding, per-mode cache keys, recorded mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import torch
import torch.nn.functional as F
from recorded_mode import save_with_prompt_mode

from lsmseg.model import LSMSeg, build_model, get_config, read_metadata, save_checkpoint
from lsmseg.prompt_cache import (
    ATTRIBUTES,
    PROMPT_VERSION,
    TEMPLATES,
    Bank,
    EmbeddingStore,
    PromptBuilder,
    ValidationError,
    embedding_key,
    ensemble_encoder,
    recorded_prompt_mode,
    resolve_prompt_mode,
)
from lsmseg.prompt_cache.names import first_synonym
from lsmseg.training.prompts import class_prompts


@pytest.fixture(scope="module")
def single_prompt_model() -> LSMSeg:
    """The tiny preset with one prompt per class (P = 1), as imported CAT-Seg checkpoints have."""
    torch.manual_seed(3)
    return build_model(get_config("tiny").replace(prompts_per_class=1)).eval()


def test_catseg_mode_uses_cat_segs_template_and_first_synonym_exactly() -> None:
    ade847 = Bank().vocabulary("ade847")
    names = [
        "building, edifice",
        "person, individual, someone, somebody, mortal, soul",
        "car, auto, automobile, machine, motorcar",
        "pot, flowerpot",
        "pot",
        "wall",
        "traffic light, traffic signal, stoplight",
        "kitchen island",
    ]
    assert set(names) <= set(ade847)
    extra = ["tv,monitor", "Sidewalk,   PAVEMENT"]  # a comma without a space; a user's spelling
    built = PromptBuilder(Bank(), mode="catseg").build(names + extra)
    assert built.prompts == [
        ["A photo of a building in the scene"],
        ["A photo of a person in the scene"],
        ["A photo of a car in the scene"],
        ["A photo of a pot in the scene"],
        ["A photo of a pot in the scene"],  # ADE-847 classes that share a first synonym share a prompt
        ["A photo of a wall in the scene"],
        ["A photo of a traffic light in the scene"],
        ["A photo of a kitchen island in the scene"],
        ["A photo of a tv,monitor in the scene"],
        ["A photo of a sidewalk in the scene"],
    ]
    assert first_synonym("tv,monitor") == "tv"  # our own synonym rule would have split it
    assert built.sources == ["template"] * len(built.classes)
    assert built.counts == {"user": 0, "bank": 0, "llm": 0, "template": 10}


def test_catseg_mode_ignores_descriptions_but_still_validates_them() -> None:
    builder = PromptBuilder(Bank(), mode="catseg")
    built = builder.build(["wall", "cat"], {"cat": ["a cat sitting on a mat."]})
    assert built.prompts == [["A photo of a wall in the scene"], ["A photo of a cat in the scene"]]
    with pytest.raises(ValidationError, match="not in the class list"):
        builder.build(["wall"], {"dog": ["a dog."]})


@pytest.mark.parametrize("mode", ["catseg", "ensemble"])
def test_single_embedding_modes_need_one_prompt_per_class(mode: str) -> None:
    with pytest.raises(ValueError, match=rf"prompt mode '{mode}' gives one embedding per class.*P = 5"):
        PromptBuilder(Bank(), prompts_per_class=5, mode=mode)
    with pytest.raises(ValueError, match="unknown prompt mode 'fancy'"):
        PromptBuilder(Bank(), mode="fancy")


def test_ensemble_mode_keeps_every_sentence_of_the_source() -> None:
    bank = Bank()
    mine = ["a small cat.", "a cat with soft fur.", "a cat curled up asleep."]
    built = PromptBuilder(bank, mode="ensemble").build(["wall", "glorbix", "cat"], {"cat": mine})
    assert built.sources == ["bank", "template", "user"]
    assert built.prompts[0] == bank.descriptions("wall") and len(built.prompts[0]) == len(ATTRIBUTES)
    assert built.prompts[1] == [template.format("glorbix") for template in TEMPLATES[: len(ATTRIBUTES)]]
    assert built.prompts[2] == mine


def test_ensemble_vector_is_the_normalised_mean_of_normalised_sentence_embeddings(
    single_prompt_model: LSMSeg,
) -> None:
    lists = [
        ["a photo of a wall.", "a flat vertical surface.", "bricks in a row."],
        ["a photo of the sky."],
        ["a red car.", "a car on a road."],
    ]
    with torch.no_grad():
        ensemble = ensemble_encoder(single_prompt_model.encode_text)(lists)
        assert ensemble.shape == (3, 1, 32)
        for row, sentences in zip(ensemble, lists, strict=True):
            each = torch.stack([single_prompt_model.encode_text([[s]])[0, 0] for s in sentences])
            expected = F.normalize(F.normalize(each, dim=-1).mean(dim=0), dim=-1)
            torch.testing.assert_close(row[0], expected, atol=1e-6, rtol=0)
            if len(sentences) > 1:  # a real average: unlike any one sentence's embedding
                assert (each @ row[0]).max() < 0.9999
    assert torch.allclose(ensemble.norm(dim=-1), torch.ones(3, 1))


def _sentence_rows(model: LSMSeg):
    """An attributes-mode encoder for five prompts a class, from a P = 1 model: one row per sentence."""

    def encode(lists: list[list[str]]) -> torch.Tensor:
        flat = model.encode_text([[sentence] for group in lists for sentence in group])
        return flat.view(len(lists), len(lists[0]), -1)

    return encode


def test_cache_keys_and_values_of_the_modes_never_mix(redis_url: str, single_prompt_model: LSMSeg) -> None:
    fingerprint = single_prompt_model.text_fingerprint()
    sentences = [Bank().descriptions("wall")]  # the same five sentences in both modes
    catseg = [["A photo of a wall in the scene"]]
    with torch.no_grad():
        five = EmbeddingStore(redis_url, fingerprint, PROMPT_VERSION).get(
            sentences, _sentence_rows(single_prompt_model)
        )
        averaged = EmbeddingStore(redis_url, fingerprint, PROMPT_VERSION, prompt_mode="ensemble").get(
            sentences, ensemble_encoder(single_prompt_model.encode_text)
        )
        one = EmbeddingStore(redis_url, fingerprint, PROMPT_VERSION, prompt_mode="catseg").get(
            catseg, single_prompt_model.encode_text
        )
    assert five.shape == (1, 5, 32) and averaged.shape == (1, 1, 32) and one.shape == (1, 1, 32)
    keys = {
        embedding_key(fingerprint, sentences[0]),
        embedding_key(fingerprint, sentences[0], "ensemble"),
        embedding_key(fingerprint, catseg[0], "catseg"),
    }
    assert len(keys) == 3 and embedding_key(fingerprint, catseg[0]) not in keys
    client = redis.Redis.from_url(redis_url)
    assert {key.decode() for key in client.keys("lsmseg:v1:emb:*")} == keys
    assert len(client.get(embedding_key(fingerprint, sentences[0]))) == 5 * 32 * 2  # float16 P×D
    assert len(client.get(embedding_key(fingerprint, sentences[0], "ensemble"))) == 32 * 2

    def must_not_encode(lists: list[list[str]]) -> torch.Tensor:
        raise AssertionError(f"encoded {lists}, but Redis holds it")

    # Fresh stores (empty memory) read each mode's own entry back from Redis.
    again = EmbeddingStore(redis_url, fingerprint, PROMPT_VERSION, prompt_mode="ensemble")
    torch.testing.assert_close(again.get(sentences, must_not_encode), averaged, atol=1e-3, rtol=0)
    again = EmbeddingStore(redis_url, fingerprint, PROMPT_VERSION)
    torch.testing.assert_close(again.get(sentences, must_not_encode), five, atol=1e-3, rtol=0)


def test_ensemble_store_takes_classes_with_different_sentence_counts(single_prompt_model: LSMSeg) -> None:
    fingerprint = single_prompt_model.text_fingerprint()
    store = EmbeddingStore(None, fingerprint, PROMPT_VERSION, prompt_mode="ensemble")
    lists = [["a wall.", "a brick wall."], ["the sky."]]
    with torch.no_grad():
        text = store.get(lists, ensemble_encoder(single_prompt_model.encode_text))
    assert text.shape == (2, 1, 32)
    with pytest.raises(ValueError, match="at least one sentence"):
        store.get([["a wall."], []], ensemble_encoder(single_prompt_model.encode_text))


def test_checkpoints_record_their_prompt_mode(tmp_path: Path, single_prompt_model: LSMSeg) -> None:
    recorded = save_with_prompt_mode(single_prompt_model, tmp_path / "a.safetensors", "catseg")
    plain = save_checkpoint(single_prompt_model, tmp_path / "b.safetensors")
    assert recorded_prompt_mode(read_metadata(recorded)) == "catseg"
    assert recorded_prompt_mode(read_metadata(plain)) == "attributes"
    assert recorded_prompt_mode({"prompt_mode": "ensemble", "extra": {}}) == "ensemble"


def test_an_override_wins_and_is_checked_against_the_model() -> None:
    assert resolve_prompt_mode("catseg", None, 1) == "catseg"
    assert resolve_prompt_mode("catseg", "ensemble", 1) == "ensemble"
    assert resolve_prompt_mode("attributes", None, 5) == "attributes"
    with pytest.raises(ValueError, match=r"P = 5.*use prompt mode 'attributes'"):
        resolve_prompt_mode("attributes", "catseg", 5)


def test_training_prompts_follow_the_mode() -> None:
    prompts, counts = class_prompts(["building, edifice", "wall"], 1, "template", mode="catseg")
    assert prompts == [["A photo of a building in the scene"], ["A photo of a wall in the scene"]]
    assert counts["template"] == 2
    prompts, counts = class_prompts(["wall"], 1, "template", mode="ensemble")
    assert prompts == [[template.format("wall") for template in TEMPLATES[: len(ATTRIBUTES)]]]
    prompts, counts = class_prompts(["wall"], 1, "bank", mode="ensemble")
    assert prompts == [Bank().descriptions("wall")] and counts["bank"] == 1
    with pytest.raises(ValueError, match="P = 2"):
        class_prompts(["wall"], 2, "bank", mode="catseg")
