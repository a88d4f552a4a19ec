"""The real service (`python -m lsmseg.service`, i.e. uvicorn) in a subprocess on a free port, for service
tests."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from lsmseg.service.client import LSMSegClient

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120  # imports, the tiny model and its warm-up take ~10 s on two busy cores


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """One uvicorn worker with the given LSMSEG_* settings; its log goes to `log_path`."""

    def __init__(self, log_path: Path, **settings: object) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.settings = settings
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, until: str = "ready") -> ServiceProcess:
        """Start the worker and wait until its model is `until` (/readyz's status: "failed" for a model that
        cannot load)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("LSMSEG_")}
        env.update({"LSMSEG_HOST": "127.0.0.1", "LSMSEG_PORT": str(self.port), "LSMSEG_LOG_LEVEL": "warning"})
        env.update({f"LSMSEG_{key.upper()}": str(value) for key, value in self.settings.items()})
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lsmseg.service"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).json()["status"] == until:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the service was not {until} within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully on SIGTERM
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process is not None:
            self._log.close()
        self.process = None

    def client(self, **options: object) -> LSMSegClient:
        return LSMSegClient(self.url, **options)  # type: ignore[arg-type]

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def image_bytes(
    width: int = 96, height: int = 64, format: str = "PNG", mode: str = "RGB", seed: int = 0
) -> bytes:
    """A random-noise test image of the given size, encoded."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()
