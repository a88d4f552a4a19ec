"""EmbeddingStore with the tiny model's text tower and a real Redis: tiers, keys, float16, outages."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
import torch

from lsmseg.model import build_model
from lsmseg.prompt_cache import PROMPT_VERSION, EmbeddingStore, RedisLink, embedding_key

NAMES = ["cat", "dog", "sofa", "wall", "sky", "river", "lamp", "car"]


class CountingEncoder:
    """The tiny model's encode_text, remembering what it was asked to encode."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = build_model("tiny").eval()
        self.calls: list[list[list[str]]] = []

    @property
    def fingerprint(self) -> str:
        return self.model.text_fingerprint()

    def __call__(self, prompts: list[list[str]]) -> torch.Tensor:
        self.calls.append(prompts)
        return self.model.encode_text(prompts)

    def exact(self, prompts: list[list[str]]) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_text(prompts)


@pytest.fixture(scope="module")
def encoder_a() -> CountingEncoder:
    return CountingEncoder(seed=1)


@pytest.fixture(scope="module")
def encoder_b() -> CountingEncoder:
    return CountingEncoder(seed=2)


@pytest.fixture
def encoder(encoder_a: CountingEncoder) -> CountingEncoder:
    encoder_a.calls.clear()
    return encoder_a


def prompts_for(names: list[str]) -> list[list[str]]:
    # The tiny preset takes two prompts per class.
    return [[f"a photo of a {name}.", f"a {name} seen from above."] for name in names]


def data_commands(client: redis.Redis) -> dict[str, int]:
    """Commands the server ran since CONFIG RESETSTAT, without this test's own and connection set-up."""
    stats = client.info("commandstats")
    bookkeeping = ("config", "info", "client", "hello")
    return {
        name.removeprefix("cmdstat_"): entry["calls"]
        for name, entry in stats.items()
        if not name.removeprefix("cmdstat_").startswith(bookkeeping)
    }


def test_each_tier_is_used_and_counted(redis_url: str, encoder: CountingEncoder) -> None:
    prompts = prompts_for(NAMES[:4])
    store = EmbeddingStore(redis_url, encoder.fingerprint, PROMPT_VERSION)
    cold = store.get(prompts, encoder)
    assert cold.shape == (4, 2, 32) and cold.dtype == torch.float32
    assert torch.allclose(cold.norm(dim=-1), torch.ones(4, 2), atol=1e-5)
    assert store.counts() == {("memory", "miss"): 4, ("redis", "miss"): 4, ("encode", "computed"): 4}

    warm = store.get(prompts, encoder)
    assert torch.equal(warm, cold)
    assert store.counts()[("memory", "hit")] == 4
    assert len(encoder.calls) == 1

    # A new process (empty memory) finds everything in Redis and encodes nothing.
    other = EmbeddingStore(redis_url, encoder.fingerprint, PROMPT_VERSION)
    from_redis = other.get(prompts, encoder)
    assert other.counts() == {("memory", "miss"): 4, ("redis", "hit"): 4}
    assert len(encoder.calls) == 1
    assert torch.allclose(from_redis, cold, atol=1e-3)

    # Without a memory tier every lookup is served by Redis.
    redis_only = EmbeddingStore(redis_url, encoder.fingerprint, PROMPT_VERSION, memory_items=0)
    redis_only.get(prompts, encoder)
    assert torch.equal(redis_only.get(prompts, encoder), from_redis)
    assert redis_only.counts() == {("memory", "miss"): 8, ("redis", "hit"): 8}


def test_float16_values_round_trip_through_redis(redis_url: str, encoder: CountingEncoder) -> None:
    prompts = prompts_for(NAMES)
    exact = encoder.exact(prompts)
    EmbeddingStore(redis_url, encoder.fingerprint, PROMPT_VERSION).get(prompts, encoder)

    raw = redis.Redis.from_url(redis_url).get(embedding_key(encoder.fingerprint, prompts[3]))
    assert len(raw) == 2 * 32 * 2  # P×D float16
    assert np.array_equal(np.frombuffer(raw, dtype=np.float16).reshape(2, 32), exact[3].half().numpy())

    from_redis = EmbeddingStore(redis_url, encoder.fingerprint, PROMPT_VERSION).get(prompts, encoder)
    assert from_redis.dtype == torch.float32
    error = (from_redis - exact).abs().max().item()
    assert 0 < error < 1e-3  # rounded to float16, and only that
    assert torch.allclose(from_redis.norm(dim=-1), torch.ones(len(NAMES), 2), atol=2e-3)


def test_only_the_misses_are_encoded(redis_url: str, encoder: CountingEncoder) -> None:
    store = EmbeddingStore(redis_url, encoder.fingerprint, PROMPT_VERSION)
    store.get(prompts_for(["cat", "dog", "sofa"]), encoder)
    asked = prompts_for(["lamp", "dog", "car", "cat", "river", "sofa"])
    result = store.get(asked, encoder)
    assert encoder.calls[1] == prompts_for(["lamp", "car", "river"])
    assert torch.allclose(result, encoder.exact(asked), atol=1e-6)  # rows in the order asked


def test_model_fingerprints_never_share_embeddings(
    redis_url: str, encoder: CountingEncoder, encoder_b: CountingEncoder
) -> None:
    assert encoder.fingerprint != encoder_b.fingerprint
    prompts = prompts_for(NAMES[:3])
    store_a = EmbeddingStore(redis_url, encoder.fingerprint, PROMPT_VERSION)
    store_b = EmbeddingStore(redis_url, encoder_b.fingerprint, PROMPT_VERSION)
    from_a = store_a.get(prompts, encoder)
    encoder_b.calls.clear()
    from_b = store_b.get(prompts, encoder_b)
    assert encoder_b.calls == [prompts]
    assert store_b.counts()[("redis", "miss")] == 3
    assert torch.allclose(from_b, encoder_b.exact(prompts), atol=1e-6)
    assert not torch.allclose(from_a, from_b, atol=1e-2)
    assert len(redis.Redis.from_url(redis_url).keys("lsmseg:v1:emb:*")) == 6


def test_a_warm_lookup_is_one_mget(private_redis, encoder: CountingEncoder) -> None:
    admin = redis.Redis.from_url(private_redis.url)
    prompts = prompts_for(NAMES)
    admin.config_resetstat()
    EmbeddingStore(private_redis.url, encoder.fingerprint, PROMPT_VERSION).get(prompts, encoder)
    assert data_commands(admin) == {"mget": 1, "set": len(NAMES)}  # the SETs go in one pipeline

    admin.config_resetstat()
    fresh = EmbeddingStore(private_redis.url, encoder.fingerprint, PROMPT_VERSION)
    fresh.get(prompts, encoder)
    assert data_commands(admin) == {"mget": 1}

    admin.config_resetstat()
    fresh.get(prompts, encoder)  # served from memory: Redis is not asked at all
    assert data_commands(admin) == {}


def test_memory_only_store(encoder: CountingEncoder) -> None:
    store = EmbeddingStore(None, encoder.fingerprint, PROMPT_VERSION, memory_items=2)
    assert store.redis_state() == "disabled"
    prompts = prompts_for(["cat", "dog", "sofa"])
    store.get(prompts, encoder)
    store.get(prompts[1:], encoder)  # the LRU kept the two most recent
    assert store.counts() == {("memory", "miss"): 3, ("memory", "hit"): 2, ("encode", "computed"): 3}
    store.get(prompts[:1], encoder)  # "cat" was evicted
    assert encoder.calls[-1] == prompts[:1]


def test_counts_are_reported_to_a_listener(encoder: CountingEncoder) -> None:
    seen: list[tuple[str, str, int]] = []
    store = EmbeddingStore(None, encoder.fingerprint, PROMPT_VERSION, on_count=lambda *ev: seen.append(ev))
    store.get(prompts_for(["cat", "dog"]), encoder)
    store.get(prompts_for(["cat"]), encoder)
    assert seen == [("memory", "miss", 2), ("encode", "computed", 2), ("memory", "hit", 1)]


def test_bad_shapes_are_rejected(encoder: CountingEncoder) -> None:
    store = EmbeddingStore(None, encoder.fingerprint, PROMPT_VERSION)
    with pytest.raises(ValueError, match="same, non-zero number of prompts"):
        store.get([["a cat"], ["a dog", "a puppy"]], encoder)
    with pytest.raises(ValueError, match=r"encode_fn returned shape \(1, 2, 32\); expected \(2, 2\)"):
        store.get(prompts_for(["cat", "dog"]), lambda prompts: encoder.exact(prompts[:1]))


def test_redis_outage_is_survived_counted_and_healed(private_redis, encoder: CountingEncoder) -> None:
    link = RedisLink(private_redis.url, timeout_s=0.2, cooldown_s=60.0)
    store = EmbeddingStore(link, encoder.fingerprint, PROMPT_VERSION)
    before = prompts_for(NAMES[:4])
    store.get(before, encoder)
    assert store.redis_state() == "up"

    private_redis.stop()
    during = prompts_for(NAMES)
    started = time.perf_counter()
    result = store.get(during, encoder)  # 4 from memory, 4 encoded locally
    assert time.perf_counter() - started < 1.0
    assert torch.allclose(result, encoder.exact(during), atol=1e-6)
    assert encoder.calls[-1] == during[4:]
    assert store.counts()[("redis", "error")] == 4
    assert store.outages == 1
    assert store.redis_state() == "down"

    # While the breaker is open no call even tries to connect.
    store.get(prompts_for(["tree"]), encoder)
    assert store.counts()[("redis", "skipped")] == 1
    assert link.failures == 1 and store.outages == 1

    private_redis.start()  # same port, empty database: what was written before the outage is gone
    assert store.redis_state() == "down"  # still cooling down: no probe yet
    link.cooldown_s = 0.0
    assert store.redis_state() == "up"
    store.get(during, encoder)  # all from memory; what the outage held back is written now
    everything = prompts_for([*NAMES, "tree"])
    fresh = EmbeddingStore(private_redis.url, encoder.fingerprint, PROMPT_VERSION)
    fresh.get(everything, encoder)
    assert fresh.counts()[("redis", "hit")] == 5  # the four encoded during the outage, and "tree"
    assert encoder.calls[-1] == before  # lost with the old server: encoded once more and written back
    calls = len(encoder.calls)
    refilled = EmbeddingStore(private_redis.url, encoder.fingerprint, PROMPT_VERSION).get(everything, encoder)
    assert len(encoder.calls) == calls
    assert torch.allclose(refilled, encoder.exact(everything), atol=1e-3)
