"""lsmseg-serve refuses to start, with a message naming the file, when the configured model is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from service_server import REPO_ROOT


def _serve(**settings: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LSMSEG_")}
    env.update({f"LSMSEG_{key.upper()}": value for key, value in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
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
