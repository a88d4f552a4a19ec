"""Shared fixtures: a real Redis (the machine's, or one started here) and private servers a test may kill."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

SHARED_REDIS_HOST = "127.0.0.1"
SHARED_REDIS_PORT = 6379
# Tests own this database and flush it; the rest of the server is left alone. Runs that share one Redis at
# the same time (several checkouts on one machine) each pick their own with LSMSEG_TEST_REDIS_DB.
TEST_DB = int(os.environ.get("LSMSEG_TEST_REDIS_DB", "15"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2).ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A redis-server process of our own, so a test can stop and restart it."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def _shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    if _answers(SHARED_REDIS_PORT):
        yield SHARED_REDIS_HOST, SHARED_REDIS_PORT
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield "127.0.0.1", server.port
    server.stop()


def empty_test_db(shared_redis: tuple[str, int]) -> str:
    """Flush the tests' database of the shared Redis and return its URL."""
    host, port = shared_redis
    client = redis.Redis(host=host, port=port, db=TEST_DB)
    client.flushdb()
    client.close()
    return f"redis://{host}:{port}/{TEST_DB}"


@pytest.fixture
def redis_url(_shared_redis: tuple[str, int]) -> str:
    """URL of a real Redis database that is empty at the start of the test."""
    return empty_test_db(_shared_redis)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started redis-server that only this test uses; it may stop() and start() it again."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model():
    """The `tiny` preset with fixed random weights, in eval mode. Tests must not change it."""
    import torch

    from lsmseg.model import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="session")
def tiny_text(tiny_model):
    """Text embeddings of 12 made-up classes for the tiny model (12×2×32)."""
    import torch

    with torch.no_grad():
        return tiny_model.encode_text([[f"a photo of thing {i}", f"thing number {i}"] for i in range(12)])


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """The tiny model exported to ONNX once per session (the export takes tens of seconds)."""
    from lsmseg.model.onnx import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
