"""The demo's pipeline: pretrain the tiny backbones, train the LSMSeg head, score it, write the checkpoint."""

from __future__ import annotations

import dataclasses
import json
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsmseg.model import LSMSeg, build_model, get_config, load_checkpoint, read_metadata, save_checkpoint
from lsmseg.training.datasets.base import Sample
from lsmseg.training.datasets.registry import DATASETS
from lsmseg.training.datasets.synthetic import SEEN_CLASSES, UNSEEN_CLASSES, SyntheticScenes
from lsmseg.training.demo.figures import example_figure, pick_example
from lsmseg.training.demo.report import TEST_DATASET, evaluate_report, markdown_report
from lsmseg.training.pretrain import (
    ClipPretrainConfig,
    ClipPretrainer,
    SamPretrainConfig,
    SamPretrainer,
    render_scene_bank,
)
from lsmseg.training.prompts import dataset_descriptions
from lsmseg.training.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
DEMO_CHECKPOINT = ROOT / "checkpoints" / "demo.safetensors"
REPORT_DIR = ROOT / "docs"
# What the service tells people the demo model knows (checkpoint metadata "domain"; a test checks it names
# every shape and background of training.datasets.synthetic).
DEMO_DOMAIN = (
    "synthetic scenes only: circles, rings, squares, triangles, stars and crosses in 8 colours on grass, "
    "water, sky, sand and brick, stone or wooden walls and floors; it does not know real photos"
)


@dataclass
class DemoConfig:
    seed: int = 0
    threads: int = 2
    # Rendered once at the model's input size and shared by both backbones: scenes, and single-object
    # pictures (the close-ups web data is full of, where a caption says what the one object is).
    pretrain_scenes: int = 8000
    pretrain_objects: int = 4000
    clip: ClipPretrainConfig = field(default_factory=ClipPretrainConfig)
    sam: SamPretrainConfig = field(default_factory=SamPretrainConfig)
    train_images: int = 4000  # seen-class scenes (128 px, like the registry's "synthetic-train")
    # 500 head iterations leave CLIP its pretraining steps inside the budget: from the 3500-step backbones
    # they score 78.6 seen against 79.2 for 1000 iterations (refined), which would cost CLIP 1000 steps.
    iterations: int = 500
    batch_size: int = 8
    lr: float = 1e-3
    # CLIP q/v at a tenth of the head's rate: the real models' 0.01 barely moves a CLIP trained for minutes.
    clip_lr_multiplier: float = 0.1
    warmup_iterations: int = 50
    # CFM k while training: the inference k, as the paper trains. A step costs 0.43x one with every seen class
    # (k = 48; profiled), so 1000 iterations cost about 0.6x of 700 without it
    # (docs/experiments/2026-12-02-head-and-clip-budget.md).
    train_k: int = 16
    # Scale jitter of the training crops: the short side goes to 96 px × U(1, 1.75), i.e. 96–168 px, then a
    # 96² crop. That is 0.75–1.3x the scenes' own 128 px, around the scales the sliding-window evaluation sees
    # them at (1.25x, 160 px) and its global view (0.75x). CAT-Seg's 0.5–2 would spend a quarter of the crops
    # at below half that scale (docs/experiments/2026-12-02-head-and-clip-budget.md).
    train_scale_range: tuple[float, float] = (1.0, 1.75)
    test_images: int | None = None  # None: the whole registry test split


class RenderedDataset:
    """A dataset rendered once into memory (generation costs more than the tiny model's data loading)."""

    def __init__(self, dataset: Any) -> None:
        self.classes = list(dataset.classes)
        self.descriptions = dataset_descriptions(dataset)
        self.samples: list[Sample] = [dataset[index] for index in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pretraining_settings(config: DemoConfig) -> dict[str, Any]:
    """The DemoConfig fields that decide the pretrained backbones."""
    return {
        "seed": config.seed,
        "pretrain_scenes": config.pretrain_scenes,
        "pretrain_objects": config.pretrain_objects,
        "clip": dataclasses.asdict(config.clip),
        "sam": dataclasses.asdict(config.sam),
    }


def reusable_pretraining(init: Path, config: DemoConfig) -> dict[str, Any]:
    """The pretraining record of an earlier run's init checkpoint, checked to be what `config` would
    pretrain (then starting from it gives the run the full command would, on the machine that made it)."""
    record = read_metadata(init)["extra"].get("pretraining")
    if record is None:
        raise ValueError(f"{init} is not the pretrained-backbone checkpoint of a training.demo run")
    if record["settings"] != pretraining_settings(config):
        raise ValueError(f"{init} was pretrained with other settings than this run's: {record['settings']}")
    return record


def demo_model_around(
    clip_state: dict[str, torch.Tensor], sam_state: dict[str, torch.Tensor], seed: int
) -> LSMSeg:
    """The `demo` preset holding pretrained CLIP and SAM weights, its head initialised from `seed`."""
    torch.manual_seed(seed)
    model = build_model(get_config("demo"))
    model.clip.model.load_state_dict(clip_state)
    model.sam.load_state_dict(sam_state)
    return model


def reused_backbones(init: Path, seed: int) -> LSMSeg:
    """The pretrained CLIP and SAM of an earlier run's init checkpoint in the CURRENT `demo` preset, the head
    initialised as a full run initialises it: the head's architecture may have changed since that run."""
    earlier = load_checkpoint(init)
    preset = get_config("demo")
    if (earlier.config.clip, earlier.config.sam, earlier.config.image_size) != (
        preset.clip,
        preset.sam,
        preset.image_size,
    ):
        raise ValueError(f"{init} holds backbones of another architecture than the demo preset's")
    return demo_model_around(earlier.clip.model.state_dict(), earlier.sam.state_dict(), seed)


def pretrained_demo_model(config: DemoConfig, image_size: int, progress: bool = True) -> tuple[LSMSeg, dict]:
    """The `demo` preset with freshly pretrained CLIP and SAM weights (the head still random)."""
    preset = get_config("demo")
    started = time.perf_counter()
    bank = render_scene_bank(
        config.pretrain_scenes, image_size, num_objects=config.pretrain_objects, progress=progress
    )
    render_seconds = time.perf_counter() - started
    started = time.perf_counter()
    clip = ClipPretrainer(preset.clip, image_size, dataclasses.replace(config.clip, seed=config.seed))
    clip_history = clip.fit(bank, progress=progress)
    clip_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sam = SamPretrainer(preset.sam, dataclasses.replace(config.sam, seed=config.seed))
    sam_history = sam.fit(bank, progress=progress)
    sam_seconds = time.perf_counter() - started
    model = demo_model_around(clip.model.state_dict(), sam.sam.state_dict(), config.seed)
    summary = {
        "settings": pretraining_settings(config),
        "render_seconds": render_seconds,
        "clip": {"seconds": clip_seconds, "first": clip_history[0], "last": clip_history[-1]},
        "sam": {"seconds": sam_seconds, "first": sam_history[0], "last": sam_history[-1]},
    }
    return model, summary


def train_head(
    init: Path, output_dir: Path, config: DemoConfig, dataset: Any, **changes: Any
) -> Path:
    """LSMSeg training on the seen classes with the real Trainer; returns its final checkpoint."""
    train_config = TrainConfig(
        preset="demo",
        clip_pretrained=None,
        init=str(init),
        dataset="synthetic-train",
        iterations=config.iterations,
        batch_size=config.batch_size,
        lr=config.lr,
        clip_lr_multiplier=config.clip_lr_multiplier,
        warmup_iterations=config.warmup_iterations,
        grad_clip=1.0,
        cfm_k=config.train_k,
        scale_range=config.train_scale_range,
        checkpoint_every=10**9,  # only the final checkpoint
        log_every=10,
        output_dir=str(output_dir),
        seed=config.seed,
        num_workers=0,
        device="cpu",
    )
    trainer = Trainer(dataclasses.replace(train_config, **changes), dataset=dataset)
    try:
        final = trainer.fit()
    finally:
        trainer.close()
    assert final is not None
    return final


def run(
    config: DemoConfig,
    output: Path,
    report_dir: Path,
    work_dir: Path,
    progress: bool = True,
    init: Path | None = None,
) -> dict:
    """The whole demo; with `init` (an earlier run's init checkpoint) the pretraining is reused."""
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    started = time.perf_counter()
    image_size = get_config("demo").image_size
    work_dir.mkdir(parents=True, exist_ok=True)

    reused = init
    if init is None:
        model, pretrain_summary = pretrained_demo_model(config, image_size, progress)
    else:
        pretrain_summary = reusable_pretraining(init, config)
        model = reused_backbones(init, config.seed)
    extra = {"stage": "pretrained backbones", "pretraining": pretrain_summary}
    init = save_checkpoint(model, work_dir / "init.safetensors", extra=extra)
    if reused is None:
        pretrain_seconds = time.perf_counter() - started
    else:
        pretrain_seconds = pretrain_summary["render_seconds"] + sum(
            pretrain_summary[part]["seconds"] for part in ("clip", "sam")
        )
    after_pretrain = time.perf_counter()

    train_set = RenderedDataset(SyntheticScenes("train", num_images=config.train_images, seed=config.seed))
    final = train_head(init, work_dir / "lsmseg", config, train_set)
    after_train = time.perf_counter()

    model = load_checkpoint(final)
    test_set = DATASETS[TEST_DATASET](None)
    if config.test_images is not None:
        test_set = SyntheticScenes("test", num_images=config.test_images)
    evaluation = evaluate_report(model, test_set, progress=progress)
    after_evaluate = time.perf_counter()

    summary = {
        "seen_classes": len(SEEN_CLASSES),
        "unseen_classes": len(UNSEEN_CLASSES),
        **{
            f"{name}_{key}": evaluation[name][key]
            for name in evaluation
            for key in ("mIoU_seen", "mIoU_unseen", "hIoU")
        },
    }
    extra = {
        "demo": {
            "command": "python -m lsmseg.training.demo",
            "seed": config.seed,
            "test": TEST_DATASET,
            **summary,
        },
        **read_metadata(final)["extra"],  # the Trainer's record: classes, prompt sources, iterations
    }
    output = save_checkpoint(model, output, extra=extra, domain=DEMO_DOMAIN)
    figure = example_figure(model, test_set, pick_example(test_set), report_dir / "demo_example.png")
    total = pretrain_seconds + time.perf_counter() - after_pretrain
    report = {
        "command": "python -m lsmseg.training.demo",
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "config": dataclasses.asdict(config),
        "checkpoint": str(output.relative_to(ROOT) if output.is_relative_to(ROOT) else output),
        "checkpoint_mb": output.stat().st_size / 2**20,
        "figure": str(figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure),
        "pretraining": pretrain_summary,
        "pretraining_reused_from": None if reused is None else str(reused),
        "seconds": {
            "render": pretrain_summary["render_seconds"],
            "clip_pretrain": pretrain_summary["clip"]["seconds"],
            "sam_pretrain": pretrain_summary["sam"]["seconds"],
            "pretrain_total": pretrain_seconds,
            "train": after_train - after_pretrain,
            "evaluate": after_evaluate - after_train,
            "total": total,
        },
        "evaluation": evaluation,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "demo_report.json").write_text(json.dumps(report, indent=1))
    (report_dir / "demo_report.md").write_text(markdown_report(report))
    return report
