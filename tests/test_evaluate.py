"""Evaluation: metrics per dataset, CFM recall, seen/unseen split, the CLI's table and JSON."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recorded_mode import save_with_prompt_mode

from lsmseg.model import LSMSeg, build_model, get_config, save_checkpoint
from lsmseg.training.datasets import SEEN_CLASSES, UNSEEN_CLASSES, SyntheticScenes
from lsmseg.training.datasets.voc import VOC20B_CATSEG_CLASSES
from lsmseg.training.evaluate import EvaluationOptions, evaluate_dataset, main, markdown_table, prompt_classes


@pytest.fixture(scope="module")
def test_scenes() -> SyntheticScenes:
    return SyntheticScenes("test", num_images=3, image_size=64, seed=11)


def test_cfm_recall_is_one_when_every_class_is_kept(tiny_model: LSMSeg, test_scenes) -> None:
    everything = evaluate_dataset(
        tiny_model, test_scenes, "synthetic-test", EvaluationOptions(k=100), progress=False
    )
    assert everything["cfm_recall"] == 1.0
    assert everything["images"] == 3 and everything["classes"] == len(test_scenes.classes)
    assert 0.0 <= everything["mIoU"] <= 1.0 and 0.0 <= everything["pAcc"] <= 1.0
    one = evaluate_dataset(tiny_model, test_scenes, "synthetic-test", EvaluationOptions(k=1), progress=False)
    assert one["cfm_recall"] < 1.0 and one["cfm_k"] == 1
    assert "confusion" not in one


def test_confusion_counts_every_labelled_pixel(tiny_model: LSMSeg, test_scenes) -> None:
    options = EvaluationOptions(k=100, confusion=True)
    result = evaluate_dataset(tiny_model, test_scenes, "synthetic-test", options, progress=False)
    confusion = np.array(result["confusion"])
    assert confusion.shape == (len(test_scenes.classes),) * 2
    assert confusion.sum() == sum((sample.label >= 0).sum() for sample in test_scenes)
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["pAcc"])


def test_seen_unseen_split_and_prompt_source(tiny_model: LSMSeg, test_scenes) -> None:
    result = evaluate_dataset(
        tiny_model,
        test_scenes,
        "synthetic-test",
        EvaluationOptions(prompts="template", limit=2),
        seen_names=SEEN_CLASSES,
        progress=False,
    )
    assert result["images"] == 2
    assert {"mIoU_seen", "mIoU_unseen", "hIoU"} <= set(result)
    assert result["prompt_sources"] == {"template": len(SEEN_CLASSES) + len(UNSEEN_CLASSES)}
    table = markdown_table([result])
    assert table.splitlines()[0].startswith("| dataset | images | classes | mIoU")
    assert "synthetic-test" in table and "hIoU" in table


def test_voc20b_is_asked_with_background_classes() -> None:
    asked = prompt_classes("voc20b", ["aeroplane"] * 21)
    assert asked == list(VOC20B_CATSEG_CLASSES) and len(asked) == 59
    assert prompt_classes("ade150", ["wall", "sky"]) == ["wall", "sky"]


def test_cli_writes_json_and_prints_a_table(tiny_model: LSMSeg, tmp_path: Path, capsys) -> None:
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    out = tmp_path / "eval.json"
    main(
        [
            "--checkpoint",
            str(checkpoint),
            "--datasets",
            "synthetic-test",
            "--limit",
            "2",
            "--seen",
            "auto",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr().out
    assert "| synthetic-test | 2 | 58 |" in printed
    report = json.loads(out.read_text())
    assert report["results"][0]["dataset"] == "synthetic-test"
    assert 0.0 <= report["results"][0]["mIoU_unseen"] <= 1.0


def _cli_result(checkpoint: Path, out: Path, *flags: str) -> dict:
    base = ["--checkpoint", str(checkpoint), "--datasets", "synthetic-test", "--limit", "1"]
    main([*base, "--out", str(out), "--device", "cpu", *flags])
    return json.loads(out.read_text())["results"][0]


def test_cli_evaluates_with_the_recorded_prompt_mode_and_catseg_protocol(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = build_model(get_config("tiny").replace(prompts_per_class=1)).eval()
    checkpoint = save_with_prompt_mode(model, tmp_path / "catseg.safetensors", "catseg")
    result = _cli_result(checkpoint, tmp_path / "a.json", "--protocol", "catseg")
    assert result["prompt_mode"] == "catseg" and result["protocol"] == "catseg"
    assert result["prompt_sources"] == {"user": 0, "bank": 0, "llm": 0, "template": 58}
    assert result["views"]["windows"] == 4 and result["views"]["clip_input"] == 64
    assert 0.0 <= result["mIoU"] <= 1.0
    # The scenes' own descriptions, averaged per class, once the mode is overridden.
    result = _cli_result(checkpoint, tmp_path / "b.json", "--prompt-mode", "ensemble")
    assert result["prompt_mode"] == "ensemble" and result["protocol"] == "lsmseg"
    assert result["prompt_sources"]["user"] == 58


def test_cli_refuses_a_single_prompt_mode_for_a_multi_prompt_model(
    tiny_model: LSMSeg, tmp_path: Path, capsys
) -> None:
    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    with pytest.raises(SystemExit) as stopped:
        _cli_result(checkpoint, tmp_path / "c.json", "--prompt-mode", "catseg")
    assert stopped.value.code == 2
    assert "prompt mode 'catseg' gives one embedding per class" in capsys.readouterr().err
