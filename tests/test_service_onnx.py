"""LSMSEG_BACKEND=onnx end to end, and two workers sharing one Redis (the scale-out set-up of deploy/).

One torch worker and one ONNX worker (real uvicorn processes, the same seeded `tiny` preset) share a Redis
database: vocabularies registered on either are served by both, and both give the same label maps.

Label maps are compared on text embeddings both workers read from Redis (float16): the worker that encodes
a class list keeps its own float32 copy, which can flip a pixel where two classes nearly tie.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import torch
from conftest import RedisServer
from prometheus_client.parser import text_string_to_metric_families
from service_server import REPO_ROOT, ServiceProcess, free_port, image_bytes

from lsmseg.prompt_cache import Bank, EmbeddingStore, PromptBuilder
from lsmseg.service.backends import build_backend, cached_graph
from lsmseg.service.loader import ModelConfigError, ModelPlan
from lsmseg.service.settings import Settings

EMBEDDING_TTL_S = 3600
CLASSES = ["wall", "floor", "ceiling", "window", "a purple dinosaur"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    """A Redis of this module's own: the workers' shared state is all that is in it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture(scope="module")
def redis_db(redis_server) -> redis.Redis:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def seed_embeddings(redis_url, tiny_model):
    """Write the embeddings of a class list to Redis as a worker would (the workers run this same model)."""
    bank = Bank()
    store = EmbeddingStore(
        redis_url, tiny_model.text_fingerprint(), bank.prompt_version, ttl_s=EMBEDDING_TTL_S
    )
    builder = PromptBuilder(bank, None, tiny_model.config.prompts_per_class)

    def seed(classes: list[str]) -> None:
        with torch.no_grad():
            store.get(builder.build(classes).prompts, tiny_model.encode_text)

    yield seed
    store.close()


@pytest.fixture(scope="module")
def workers(redis_url, tiny_onnx, tmp_path_factory) -> dict[str, ServiceProcess]:
    """{"torch": ..., "onnx": ...}, started side by side (each takes seconds to import and warm up)."""
    shared = {
        "preset": "tiny",  # the graph in tiny_onnx is this preset with the same seed
        "redis_url": redis_url,
        "embedding_ttl_s": EMBEDDING_TTL_S,
        "torch_threads": 1,  # two processes on two cores
    }
    logs = tmp_path_factory.mktemp("workers")
    processes = {
        "torch": ServiceProcess(logs / "torch.log", **shared),
        "onnx": ServiceProcess(logs / "onnx.log", backend="onnx", onnx_path=tiny_onnx, **shared),
    }
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(process.start) for process in processes.values()]
    try:
        for future in started:
            future.result()
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def test_readyz_and_metrics_report_the_backend_and_providers(workers):
    for name, worker in workers.items():
        model = httpx.get(f"{worker.url}/readyz", timeout=10).json()["model"]
        assert model["backend"] == name
        info = [
            sample.labels
            for family in text_string_to_metric_families(httpx.get(f"{worker.url}/metrics", timeout=10).text)
            for sample in family.samples
            if sample.name == "lsmseg_model_info"
        ]
        assert [labels["backend"] for labels in info] == [name]
        if name == "torch":
            assert model["providers"] == [] and info[0]["providers"] == ""
        else:
            # onnxruntime-gpu lists CUDA first where it can load it, and always ends with the CPU.
            assert model["providers"][-1] == "CPUExecutionProvider" and model["device"] == "cpu"
            assert info[0]["providers"] == ",".join(model["providers"])


def test_a_vocabulary_registered_on_one_worker_is_served_by_the_other(workers, seed_embeddings):
    image = image_bytes(90, 70, "PNG", seed=11)
    seed_embeddings(CLASSES)
    with workers["torch"].client() as torch_api, workers["onnx"].client() as onnx_api:
        vocab = torch_api.register_vocab(CLASSES, name="room")
        other = onnx_api.register_vocab(["cat", "dog", "grass"], name="garden")
        assert onnx_api.get_vocab("room").vocab_id == vocab.vocab_id
        assert torch_api.get_vocab("garden").vocab_id == other.vocab_id
        results = {
            "onnx by id": onnx_api.segment(image, vocab_id=vocab.vocab_id),
            "onnx by name": onnx_api.segment(image, vocab_id="room"),
            "torch by name": torch_api.segment(image, vocab_id="room"),
            "torch, other's vocab": torch_api.segment(image, vocab_id="garden"),
        }
    for result in results.values():
        assert result.label_map.shape == (70, 90)
    assert results["torch, other's vocab"].classes == ["cat", "dog", "grass"]
    assert results["onnx by id"].classes == CLASSES and "onnx" in results["onnx by id"].timings_ms
    np.testing.assert_array_equal(results["onnx by id"].label_map, results["onnx by name"].label_map)
    np.testing.assert_array_equal(results["onnx by id"].label_map, results["torch by name"].label_map)


def test_onnx_and_torch_workers_give_identical_label_maps(workers, seed_embeddings):
    for seed, (width, height) in enumerate([(64, 64), (120, 80), (33, 91)]):
        image = image_bytes(width, height, "PNG", seed=seed)
        classes = [f"thing {seed}-{index}" for index in range(12)]  # more than the graph's k = 8
        seed_embeddings(classes)
        maps = []
        for worker in (workers["torch"], workers["onnx"]):
            with worker.client() as api:
                maps.append(api.segment(image, classes=classes, output="both"))
        np.testing.assert_array_equal(maps[0].label_map, maps[1].label_map)
        assert [s.index for s in maps[0].segments] == [s.index for s in maps[1].segments]


def test_embeddings_expire_and_the_registry_does_not(workers, redis_db):
    """The deploy Redis evicts with volatile-lru: only keys with a TTL (the embeddings) may go."""
    with workers["torch"].client() as api:
        api.register_vocab(["sofa", "lamp"], name="lounge")
        api.segment(image_bytes(), vocab_id="lounge")
    ttls = {key.decode(): redis_db.ttl(key) for key in redis_db.scan_iter("lsmseg:v1:*")}
    embeddings = {key: ttl for key, ttl in ttls.items() if ":emb:" in key}
    registry = {key: ttl for key, ttl in ttls.items() if ":vocab:" in key or ":vocabname:" in key}
    assert embeddings and registry
    assert all(0 < ttl <= EMBEDDING_TTL_S for ttl in embeddings.values())
    assert all(ttl == -1 for ttl in registry.values())  # no expiry: never evicted


def test_a_top_k_the_onnx_graph_was_not_exported_with_is_a_422(workers):
    image = image_bytes(40, 30)
    classes = ["sky", "grass", "road"]
    with httpx.Client(base_url=workers["onnx"].url, timeout=60) as http:
        k = http.get("/readyz").json()["model"]["cfm_k"]
        for top_k, status in ((k, 200), (2, 422), (k + 1, 422)):
            files = {"image": ("i.png", image, "image/png")}
            data = {"classes": '["sky", "grass", "road"]', "top_k": str(top_k)}
            response = http.post("/segment", files=files, data=data)
            assert response.status_code == status, response.text
            if status == 422:
                error = response.json()["error"]
                assert error["code"] == "unsupported_top_k" and f"k={k}" in error["message"]
    with workers["torch"].client() as api:  # the torch backend takes any top_k
        assert api.segment(image, classes=classes, top_k=2).label_map is not None


def test_the_container_health_probe_passes_only_on_a_2xx_answer(workers):
    def probe(port: int, *path: str) -> int:
        env = os.environ | {"LSMSEG_PORT": str(port)}
        command = [sys.executable, "-m", "lsmseg.service.probe", *path]
        return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, timeout=30).returncode

    port = workers["onnx"].port
    assert probe(port) == 0 and probe(port, "/readyz") == 0  # /healthz by default
    assert probe(port, "/no-such-route") == 1
    assert probe(free_port()) == 1  # nothing listens


def test_onnx_settings_errors_stop_the_server_with_a_clear_message(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("LSMSEG_")}
    cases = [
        ({"LSMSEG_BACKEND": "onnx", "LSMSEG_ONNX_PATH": str(tmp_path / "missing.onnx")}, "missing.onnx"),
        ({"LSMSEG_BACKEND": "onnx", "LSMSEG_SLIDING_WINDOW": "true"}, "no sliding window"),
    ]
    for settings, message in cases:
        result = subprocess.run(
            [sys.executable, "-m", "lsmseg.service"], cwd=REPO_ROOT, env=env | settings,
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# The start-up export cache (a stand-in exporter: the real one takes a minute) ---------------------------
class CountingExporter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, path: Path, k: int) -> Path:
        self.calls += 1
        path.write_bytes(b"graph %d k=%d" % (self.calls, k))
        return path


def _onnx_settings(**values) -> Settings:
    return Settings(_env_file=None, backend="onnx", **values)


def test_the_start_up_export_is_reused_until_the_checkpoint_changes(tiny_model, tmp_path):
    checkpoint = tmp_path / "models" / "lsmseg.safetensors"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights v1")
    plan = ModelPlan("checkpoint", checkpoint, None)
    export = CountingExporter()
    first = cached_graph(tiny_model, plan, _onnx_settings(), export)
    assert first.parent.parent == checkpoint.parent / "onnx-cache"  # default: beside the checkpoint
    assert cached_graph(tiny_model, plan, _onnx_settings(), export) == first and export.calls == 1
    checkpoint.write_bytes(b"weights v2, retrained")  # same path, new content: the graph is stale
    assert cached_graph(tiny_model, plan, _onnx_settings(), export) == first and export.calls == 2
    assert first.read_bytes() == b"graph 2 k=8"
    elsewhere = cached_graph(tiny_model, plan, _onnx_settings(onnx_cache_dir=tmp_path / "cache"), export)
    assert elsewhere.is_relative_to(tmp_path / "cache") and export.calls == 3
    assert [p.name for p in first.parent.parent.iterdir()] == [first.parent.name]  # no staging left


def test_an_unwritable_cache_or_a_different_top_k_is_a_clear_start_up_error(tiny_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    plan = ModelPlan("random-fallback", None, "tiny")
    with pytest.raises(ModelConfigError, match="LSMSEG_ONNX_CACHE_DIR"):
        cached_graph(tiny_model, plan, _onnx_settings(onnx_cache_dir=blocker / "cache"), CountingExporter())
    with pytest.raises(ModelConfigError, match="LSMSEG_TOP_K=3"):
        build_backend(tiny_model, plan, _onnx_settings(top_k=3), "cpu", CountingExporter())
