"""A one-prompt checkpoint served in catseg and ensemble mode (real uvicorn and Redis); /readyz's mode."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import redis
import torch
from recorded_mode import save_with_prompt_mode
from service_server import ServiceProcess, image_bytes

from lsmseg.model import LSMSeg, build_model, get_config, load_checkpoint
from lsmseg.prompt_cache import PROMPT_MODES, Bank, catseg_prompt, embedding_key, ensemble_encoder
from lsmseg.prompt_cache.prompts import pick_prompts
from lsmseg.service.loader import ModelConfigError, plan_model
from lsmseg.service.settings import Settings


@pytest.fixture(scope="module")
def catseg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LSMSeg]:
    """The tiny preset with P = 1, saved recording prompt mode catseg (as the CAT-Seg importer writes it)."""
    torch.manual_seed(6)
    model = build_model(get_config("tiny").replace(prompts_per_class=1)).eval()
    path = tmp_path_factory.mktemp("checkpoints") / "catseg-tiny.safetensors"
    save_with_prompt_mode(model, path, "catseg")
    return path, load_checkpoint(path)


def _stored_embeddings(redis_url: str) -> dict[str, torch.Tensor]:
    """Every text embedding the worker wrote, decoded from float16."""
    client = redis.Redis.from_url(redis_url)
    return {
        key.decode(): torch.tensor(np.frombuffer(client.get(key), dtype=np.float16).astype(np.float32))
        for key in client.keys("lsmseg:v1:emb:*")
    }


def test_a_catseg_checkpoint_is_served_with_cat_segs_prompts(catseg_checkpoint, redis_url: str, tmp_path):
    path, model = catseg_checkpoint
    classes = ["building, edifice", "wall", "sky"]
    server = ServiceProcess(tmp_path / "service.log", checkpoint=path, redis_url=redis_url).start()
    try:
        with server.client() as client:
            status = client.readiness()["model"]
            assert status["prompt_mode"] == "catseg" and status["prompts_per_class"] == 1
            assert client.health()["model"]["prompt_mode"] == "catseg"
            vocab = client.register_vocab(classes, descriptions={"wall": ["a tall grey wall."]})
            assert vocab.prompt_sources == {"user": 0, "bank": 0, "llm": 0, "template": 3}
            result = client.segment(image_bytes(96, 64), vocab_id=vocab.vocab_id)
            assert result.classes == classes and result.label_map.shape == (64, 96)
            assert set(np.unique(result.label_map)) <= {0, 1, 2}
    finally:
        server.stop()
    # What the worker cached: CAT-Seg's template through the checkpoint's text tower, under catseg keys.
    fingerprint = model.text_fingerprint()
    stored = _stored_embeddings(redis_url)
    prompts = [catseg_prompt(name) for name in classes]
    assert set(stored) == {embedding_key(fingerprint, [prompt], "catseg") for prompt in prompts}
    with torch.no_grad():
        for prompt in prompts:
            expected = model.encode_text([[prompt]])[0, 0]
            stored_row = stored[embedding_key(fingerprint, [prompt], "catseg")]
            torch.testing.assert_close(stored_row, expected, atol=2e-3, rtol=0)


def test_the_same_checkpoint_in_ensemble_mode_averages_the_sentences(
    catseg_checkpoint, redis_url: str, tmp_path: Path
):
    path, model = catseg_checkpoint
    mine = ["a small cat.", "a cat with soft fur."]
    settings = {"checkpoint": path, "redis_url": redis_url, "prompt_mode": "ensemble"}
    server = ServiceProcess(tmp_path / "service.log", **settings).start()
    try:
        with server.client() as client:
            assert client.readiness()["model"]["prompt_mode"] == "ensemble"
            vocab = client.register_vocab(["wall", "glorbix", "cat"], descriptions={"cat": mine})
            assert vocab.prompt_sources == {"user": 1, "bank": 1, "llm": 0, "template": 1}
            result = client.segment(image_bytes(80, 60, seed=1), vocab_id=vocab.vocab_id)
            assert result.label_map.shape == (60, 80)
    finally:
        server.stop()
    fingerprint = model.text_fingerprint()
    stored = _stored_embeddings(redis_url)
    sentences = [Bank().descriptions("wall"), pick_prompts("glorbix", [], 5), mine]
    assert set(stored) == {embedding_key(fingerprint, group, "ensemble") for group in sentences}
    with torch.no_grad():
        expected = ensemble_encoder(model.encode_text)(sentences)
    for group, row in zip(sentences, expected, strict=True):
        stored_row = stored[embedding_key(fingerprint, group, "ensemble")]
        assert stored_row.shape == (32,)  # one averaged vector, however many sentences
        torch.testing.assert_close(stored_row, row[0], atol=2e-3, rtol=0)


def test_a_recorded_mode_the_model_cannot_run_is_refused_before_loading(tmp_path: Path, tiny_model: LSMSeg):
    path = save_with_prompt_mode(tiny_model, tmp_path / "odd.safetensors", "catseg")  # P = 2
    refusal = r"the checkpoint's recorded mode: prompt mode 'catseg'.* 2 prompts per class"
    with pytest.raises(ModelConfigError, match=refusal):
        plan_model(Settings(checkpoint=path))
    assert plan_model(Settings(checkpoint=path, prompt_mode="attributes")).prompt_mode == "attributes"


def test_the_setting_takes_exactly_the_prompt_modes() -> None:
    # settings.py spells the modes out (importing prompt_cache there would pull in torch).
    annotation = Settings.model_fields["prompt_mode"].annotation
    literal = next(arg for arg in get_args(annotation) if arg is not type(None))
    assert get_args(literal) == PROMPT_MODES
