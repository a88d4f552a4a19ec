"""Redis going away mid-run: requests keep succeeding, /readyz says Redis is down, and it recovers."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
from service_server import ServiceProcess, image_bytes


def _readiness(server: ServiceProcess) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def test_requests_survive_a_redis_outage(private_redis, tmp_path):
    server = ServiceProcess(tmp_path / "service.log", redis_url=private_redis.url).start()
    try:
        with server.client() as client:
            vocab = client.register_vocab(["cat", "dog", "grass"], name="garden")
            assert client.segment(image_bytes(), vocab_id="garden").classes == ["cat", "dog", "grass"]
            assert _readiness(server).json()["redis"] == "up"

            private_redis.stop()
            # Known vocabulary (from the registry's local copy) and brand-new classes (encoded here).
            known = client.segment(image_bytes(seed=1), vocab_id=vocab.vocab_id)
            assert known.vocab_id == vocab.vocab_id
            fresh = client.segment(image_bytes(seed=2), classes=["tree", "bench", "pond"])
            assert fresh.label_map.max() < 3
            new_vocab = client.register_vocab(["kite", "cloud"], name="sky-things")
            later = client.segment(image_bytes(seed=3), vocab_id="sky-things")
            assert later.vocab_id == new_vocab.vocab_id
            # The stage that touches Redis pays no multi-second timeouts or retry back-off.
            assert max(result.timings_ms["text"] for result in (known, fresh, later)) < 2000
            ready = _readiness(server)
            assert ready.status_code == 200  # the cache is optional: still ready
            assert ready.json()["redis"] == "down"
            assert client.health()["status"] == "ok"
            # Failed attempts, or lookups the open circuit breaker skipped, are counted.
            misses = [
                sample
                for family in text_string_to_metric_families(client.metrics())
                for sample in family.samples
                if sample.name == "lsmseg_embedding_cache_total"
                and sample.labels["tier"] == "redis"
                and sample.labels["result"] in ("error", "skipped")
            ]
            assert sum(sample.value for sample in misses) > 0

            private_redis.start()
            deadline = time.monotonic() + 15  # the circuit breaker retries after its cooldown
            while _readiness(server).json()["redis"] != "up":
                assert time.monotonic() < deadline, "Redis came back but /readyz still says down"
                time.sleep(0.5)
            # What was registered during the outage was written back once Redis answered again.
            assert client.get_vocab("sky-things").vocab_id == new_vocab.vocab_id
    finally:
        server.stop()
