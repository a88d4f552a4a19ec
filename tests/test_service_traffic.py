"""Batching, overload, disconnects and the API key, against a real uvicorn process (memory-only cache)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_server import ServiceProcess, image_bytes

from lsmseg.service.client import LSMSegClient, LSMSegError

API_KEY = "s3cret-test-key"
MAX_BATCH = 4
QUEUE_SIZE = 4
MAX_WAIT_MS = 400  # long, so that concurrent requests reliably meet in one batch


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    service = ServiceProcess(
        tmp_path_factory.mktemp("service") / "service.log",
        api_key=API_KEY,
        max_batch=MAX_BATCH,
        queue_size=QUEUE_SIZE,
        max_wait_ms=MAX_WAIT_MS,
        text_chunk_classes=1000,  # so that one request's new classes keep the model thread busy for seconds
    ).start()
    yield service
    service.stop()


def _metric(server: ServiceProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items())
    )


def _all_at_once(count: int, work: Callable[[int], object]) -> list[object]:
    """Run work(0..count-1) in threads released together; exceptions are returned, not raised."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_api_key_is_required_except_for_probes_and_docs(server):
    image = {"image": ("a.png", image_bytes(), "image/png")}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.post(
            f"{server.url}/segment", files=image, data={"classes": '["a"]'}, headers=headers
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{server.url}/vocab").status_code == 401
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{server.url}{path}").status_code == 200, path
    with server.client(api_key=API_KEY) as client:
        assert client.segment(image_bytes(), classes=["a", "b"]).classes == ["a", "b"]


def test_concurrent_requests_with_different_vocabularies_share_a_batch(server):
    batches_before = _metric(server, "lsmseg_batch_size_count")
    images_before = _metric(server, "lsmseg_batch_size_sum")
    vocabularies = [["cat", "dog"], ["sky", "sea", "sand"], ["car"], ["wall", "floor", "door", "window"]]

    def segment(index: int):
        with server.client(api_key=API_KEY) as client:
            return client.segment(image_bytes(80, 60, seed=index), classes=vocabularies[index])

    results = _all_at_once(len(vocabularies), segment)
    for result, classes in zip(results, vocabularies, strict=True):
        assert not isinstance(result, Exception), result
        assert result.classes == classes
        assert result.label_map.max() < len(classes)
    batches = _metric(server, "lsmseg_batch_size_count") - batches_before
    images = _metric(server, "lsmseg_batch_size_sum") - images_before
    assert images == len(vocabularies)
    assert batches < images  # at least one batch held more than one request (and vocabulary)


def test_overload_beyond_the_queue_is_refused_with_503_not_a_hang(server):
    requests = 24

    def segment(index: int):
        with server.client(api_key=API_KEY, timeout=60) as client:
            return client.segment(image_bytes(320, 240, seed=index), classes=["cat", "dog", f"thing {index}"])

    start = time.monotonic()
    results = _all_at_once(requests, segment)
    assert time.monotonic() - start < 60
    refused = [result for result in results if isinstance(result, LSMSegError)]
    served = [result for result in results if not isinstance(result, Exception)]
    assert len(refused) + len(served) == requests, [r for r in results if isinstance(r, Exception)]
    assert refused, "24 simultaneous requests should overflow a queue of 4"
    assert served, "the queued requests should still be answered"
    for error in refused:
        assert error.status == 503 and error.code == "queue_full"
        assert error.retry_after is not None and error.retry_after >= 1
    assert _metric(server, "lsmseg_rejected_requests_total", reason="queue_full") >= len(refused)


def test_a_client_that_disconnects_never_reaches_the_model(server):
    time.sleep(1)  # let earlier tests' work drain
    with server.client(api_key=API_KEY) as client:
        client.segment(image_bytes(), classes=["cat", "dog"])  # these classes' text is cached from now on
    images_before = _metric(server, "lsmseg_batch_size_sum")
    gone_before = _metric(server, "lsmseg_request_duration_seconds_count", route="/segment", status="499")
    # Occupy the model thread: a thousand never-seen class names, encoded in one chunk (this server's
    # LSMSEG_TEXT_CHUNK_CLASSES), take it seconds (200 took only ~0.25 s on a fast CI machine, less than
    # the impatient client's timeout).
    unseen = [f"blocker {uuid.uuid4().hex} {index}" for index in range(1000)]

    def block() -> None:
        with server.client(api_key=API_KEY) as client:
            client.segment(image_bytes(), classes=unseen)

    blocker = threading.Thread(target=block)
    blocker.start()
    time.sleep(1.5)  # its prompts are built and its chunk has reached the model thread
    # This request queues behind the blocker's text, and its client gives up long before the model is free.
    client = LSMSegClient(server.url, api_key=API_KEY, timeout=0.3)
    with pytest.raises(httpx.TimeoutException):
        client.segment(image_bytes(), classes=["cat", "dog"])
    client.close()
    assert blocker.is_alive(), "the blocker finished before the client gave up, so this test proves nothing"
    blocker.join(timeout=60)
    time.sleep(0.5)
    assert _metric(server, "lsmseg_batch_size_sum") == images_before + 1  # only the blocker ran
    status_499 = _metric(server, "lsmseg_request_duration_seconds_count", route="/segment", status="499")
    assert status_499 == gone_before + 1
    assert _metric(server, "lsmseg_queue_depth") == 0
