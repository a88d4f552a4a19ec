"""benchmarks/ablations.py end to end on a random demo-preset model and a tiny budget."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from lsmseg.model import build_model, read_metadata, save_checkpoint
from lsmseg.training.demo import DemoConfig

ROOT = Path(__file__).resolve().parents[1]


def test_ablations_score_inference_rows_and_retrain_the_chosen_tables(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("demo")
    checkpoint = save_checkpoint(model, tmp_path / "demo.safetensors")
    out, work = tmp_path / "ablations.json", tmp_path / "work"
    command = [
        sys.executable, "benchmarks/ablations.py", "--checkpoint", str(checkpoint), "--init", str(checkpoint),
        "--work-dir", str(work), "--iterations", "2", "--test-images", "2", "--train-images", "4",
        "--train", "sam", "--out", str(out),
    ]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]

    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(row["table"], row["training"]) for row in rows] == [
        *[("4 (CFM)", f"demo ({DemoConfig().iterations} it)")] * 4,
        ("2 (prompts)", f"demo ({DemoConfig().iterations} it)"),
        ("5 (SAM)", "short (2 it)"),
        ("5 (SAM)", "short (2 it)"),
    ]
    assert [row["variant"] for row in rows[:4]] == ["k = 4", "k = 8", "k = 16 (default)", "k = all (58)"]
    assert rows[5]["variant"].startswith("without SAM") and rows[6]["variant"].startswith("with SAM")
    for row in rows:
        assert 0 <= row["mIoU_seen"] <= 1 and 0 <= row["mIoU_unseen"] <= 1 and 0 <= row["cfm_recall"] <= 1
    # A larger k keeps more of the present classes; keeping all of them keeps every one.
    recalls = [row["cfm_recall"] for row in rows[:4]]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0
    # Only the SAM table's two variants were trained: without a SAM encoder, and the demo's weight generator.
    assert sorted(path.name for path in work.glob("init-*.safetensors")) == [
        "init-none.safetensors", "init-weight.safetensors"
    ]
    without_sam = read_metadata(work / "init-none.safetensors")
    assert without_sam["config"].sam is None and without_sam["config"].head.fusion == "none"
    assert read_metadata(work / "init-weight.safetensors")["includes_sam"] is True
    assert "| 5 (SAM) | without SAM" in completed.stdout
