"""lsmseg-serve refuses to start, with a message naming the file, when the configured model is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from service_server import REPO_ROOT, ServiceProcess, image_bytes

from lsmseg.model import build_model, get_config, save_checkpoint


def _serve(**settings: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LSMSEG_")}
    env.update({f"LSMSEG_{key.upper()}": value for key, value in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "lsmseg.service"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"checkpoint": "/nowhere/model.safetensors"}, "'/nowhere/model.safetensors' does not exist"),
        ({"preset": "vit-b16-sam-l", "sam_checkpoint": "/nowhere/sam_vit_l.pth"}, "/nowhere/sam_vit_l.pth"),
        ({"max_batch": "0"}, "invalid settings"),
        # The embedded demo checkpoint has five prompts per class.
        ({"prompt_mode": "catseg"}, "mode 'catseg' gives one embedding per class, but this model takes 5"),
        ({"prompt_mode": "fancy"}, "invalid settings"),
    ],
    ids=["missing checkpoint", "missing SAM weights", "bad setting", "catseg with P = 5", "unknown mode"],
)
def test_bad_model_settings_stop_the_server_with_a_clear_message(settings, message):
    result = _serve(**settings)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_that_fails_to_load_reports_the_setting_to_fix_and_when_to_retry(tmp_path):
    config = get_config("tiny")
    config.sam.checkpoint_file = "sam_tiny.pth"  # official SAM weights: left out of the checkpoint
    checkpoint = save_checkpoint(build_model(config), tmp_path / "no_sam.safetensors")
    service = ServiceProcess(tmp_path / "service.log", checkpoint=checkpoint).start(until="failed")
    try:
        ready = httpx.get(f"{service.url}/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "60"
        error = ready.json()["error"]
        assert "sam_tiny.pth" in error and "(setting: LSMSEG_SAM_CHECKPOINT)" in error
        files = {"image": ("i.png", image_bytes(40, 30), "image/png")}
        refused = httpx.post(f"{service.url}/segment", files=files, data={"classes": '["sky"]'})
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "60"
        assert refused.json()["error"]["code"] == "model_failed"
    finally:
        service.stop()
