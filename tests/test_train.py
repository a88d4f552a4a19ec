"""The training loop on the `tiny` preset and synthetic scenes: it learns, checkpoints, resumes exactly, and
runs under torchrun DDP."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lsmseg.model import Segmenter, load_checkpoint, read_metadata
from lsmseg.training.data import LoaderSpec, training_batches
from lsmseg.training.datasets import SyntheticScenes
from lsmseg.training.datasets.base import IGNORE_INDEX
from lsmseg.training.loss import class_presence, segmentation_loss
from lsmseg.training.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(output: Path, **changes) -> TrainConfig:
    values = dict(
        preset="tiny",
        clip_pretrained=None,
        iterations=20,
        batch_size=2,
        lr=2e-3,
        grad_clip=1.0,
        num_workers=0,
        log_every=1,
        checkpoint_every=10,
        output_dir=str(output),
        device="cpu",
    )
    values.update(changes)
    return TrainConfig(**values)


def scenes(count: int = 4) -> SyntheticScenes:
    return SyntheticScenes("train", num_images=count, image_size=64, seed=3)


def losses(output: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output / "log.jsonl").read_text().splitlines()]


def test_loss_ignores_ignored_pixels_and_padded_classes() -> None:
    labels = torch.tensor([[[0, 1], [-1, 1]]])
    indices = torch.tensor([[0, 1, -1]])
    mask = torch.tensor([[True, True, False]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2] = float("-inf")
    # Every counted (pixel, class) pair has logit 0: loss log(2), padded class and ignored pixel excluded.
    assert segmentation_loss(logits, indices, mask, labels).item() == pytest.approx(np.log(2))
    logits[0, 0, 0, 0] = 20.0  # confident and right
    logits[0, 1, 0, 0] = -20.0
    assert segmentation_loss(logits, indices, mask, labels).item() == pytest.approx(
        np.log(2) * 4 / 6, rel=1e-4
    )
    logits[0, :, 1, 0] = 1000.0  # anything on the ignored pixel changes nothing
    assert segmentation_loss(logits, indices, mask, labels).item() == pytest.approx(
        np.log(2) * 4 / 6, rel=1e-4
    )
    assert class_presence(labels, 3).tolist() == [[True, True, False]]


def test_config_from_yaml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("preset: tiny\niterations: 50\nlr: 0.001\n")
    config = TrainConfig.load(path, ["iterations=7", "clip_pretrained=null", "output_dir=/tmp/x"])
    assert (config.preset, config.iterations, config.lr, config.clip_pretrained) == ("tiny", 7, 0.001, None)
    assert (
        TrainConfig().lr == 2e-4 and TrainConfig().weight_decay == 1e-4 and TrainConfig().iterations == 80_000
    )
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.load(None, ["learning_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig.load(None, ["iterations"])


def test_scale_range_sets_the_training_crops_scale(tmp_path: Path) -> None:
    dataset = scenes(2)
    wholes = [torch.from_numpy(dataset[index].label).long() for index in range(2)]

    def first_batch(scale_range) -> torch.Tensor:
        config = tiny_config(tmp_path, crop_size=64, scale_range=scale_range)
        spec = LoaderSpec.from_config(config, image_size=64, world_size=1)
        assert spec.scale_range == tuple(float(v) for v in scale_range)
        return next(training_batches(dataset, spec, rank=0, start_iteration=0))[1]

    # Scale 1 with a crop the scene's size: every label map is a scene's own, possibly flipped.
    for label in first_batch([1, 1]):
        assert any(torch.equal(label, whole) or torch.equal(label, whole.flip(-1)) for whole in wholes)
    # Scale 0.5: the scene shrinks to 32² and the rest of the crop is padding.
    for label in first_batch((0.5, 0.5)):
        assert (label == IGNORE_INDEX).float().mean().item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="scale_range"):
        LoaderSpec.from_config(tiny_config(tmp_path, scale_range=(2.0, 1.0)), image_size=64, world_size=1)


def test_short_training_lowers_the_loss_and_writes_a_servable_checkpoint(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    trainer = Trainer(tiny_config(tmp_path), dataset=scenes())
    final = trainer.fit()
    history = losses(tmp_path)
    assert len(history) == 20
    assert np.mean(history[-5:]) < 0.8 * np.mean(history[:5])
    assert final == tmp_path / "final.safetensors"
    assert (tmp_path / "checkpoint_0000010.safetensors").is_file()
    metadata = read_metadata(final)
    assert metadata["extra"]["iteration"] == 20 and metadata["extra"]["classes"] == len(scenes().classes)
    model = load_checkpoint(final)
    trained = trainer.model.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())
    sample = scenes()[0]
    text = model.encode_text(trainer.prompts)
    result = Segmenter(model, device="cpu").segment([sample.image], text).results[0]
    assert result.label_map.shape == sample.label.shape
    assert set(np.unique(result.label_map)) <= set(range(len(trainer.prompts)))


def test_resume_continues_with_the_identical_next_step(tmp_path: Path) -> None:
    straight = Trainer(tiny_config(tmp_path / "straight", iterations=4), dataset=scenes())
    straight.fit()
    expected = losses(tmp_path / "straight")

    interrupted = Trainer(tiny_config(tmp_path / "resumed", iterations=4), dataset=scenes())
    batches = interrupted._batches()
    first = [interrupted.train_iteration(batches) for _ in range(2)]
    interrupted.save_state()
    assert first == pytest.approx(expected[:2], abs=0)

    resumed = Trainer(tiny_config(tmp_path / "resumed", iterations=4), dataset=scenes())
    assert resumed.resume()
    assert resumed.iteration == 2
    resumed.fit()
    assert losses(tmp_path / "resumed")[-2:] == expected[2:]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_ddp_two_processes_on_cpu_keep_identical_weights(tmp_path: Path) -> None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "tests" / "ddp_worker.py"),
        str(tmp_path),
    ]
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=400)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert len(losses(tmp_path)) == 3
    assert (tmp_path / "final.safetensors").is_file()


def test_warmup_cosine_ramps_up_then_decays_to_zero():
    from lsmseg.training.schedule import warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_cosine(optimizer, total_steps=12, warmup_steps=4)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])  # (step + 1) / warm-up
    assert rates[8] == pytest.approx(1.0)  # half-way through the 8 cosine steps
    assert rates[12:] == pytest.approx([0.0, 0.0])  # zero at the end and after it
    assert all(a >= b for a, b in itertools.pairwise(rates[3:]))


def test_training_in_ensemble_mode_averages_each_class_sentences_and_records_the_mode(tmp_path: Path) -> None:
    from lsmseg.model import build_model, get_config, save_checkpoint
    from lsmseg.prompt_cache.modes import ensemble_encoder

    torch.manual_seed(0)
    single = build_model(get_config("tiny").replace(name="tiny-p1", prompts_per_class=1))
    init = save_checkpoint(single, tmp_path / "p1.safetensors", prompt_mode="catseg")
    config = tiny_config(
        tmp_path / "run", init=str(init), prompt_mode="ensemble", iterations=2, dataset="synthetic-train"
    )
    trainer = Trainer(config, dataset=scenes())
    assert trainer.prompt_mode == "ensemble"
    assert all(len(sentences) == 5 for sentences in trainer.prompts)  # the bank's five, averaged into one
    with torch.no_grad():
        text = trainer.step.encode(trainer.prompts)
        expected = ensemble_encoder(trainer.model.encode_text)(trainer.prompts)
    assert text.shape == (len(trainer.prompts), 1, 32)
    torch.testing.assert_close(text, expected)
    final = trainer.fit()
    assert read_metadata(final)["prompt_mode"] == "ensemble"
    assert read_metadata(final)["domain"] == "trained on synthetic-train"
    # Without prompt_mode= the init's recorded mode is kept; a mode the model cannot take is refused.
    assert Trainer(tiny_config(tmp_path / "again", init=str(init)), dataset=scenes()).prompt_mode == "catseg"
    with pytest.raises(ValueError, match="gives one embedding per class"):
        Trainer(tiny_config(tmp_path / "bad", prompt_mode="catseg"), dataset=scenes())
