"""The demo checkpoint, from scratch: `python -m training.demo` (fixed seed; 2 CPU cores, README for timings).

1. Render synthetic scenes of all 58 classes and pretrain the tiny backbones on them (training/pretrain.py):
   CLIP on image–caption pairs only, SAM's ImageEncoderViT on class-agnostic segment targets.
2. Put both into the `demo` preset and train the LSMSeg head on the 48 SEEN classes with the real
   training.train.Trainer (CLIP q/v tuned, SAM frozen), exactly as the full-size model is trained.
3. Score the held-out test split (the registry's "synthetic-test": 500 scenes, half of the objects and
   stuff regions from the 10 unseen classes) with attribute prompts and with plain templates, with the
   sliding window, and with attribute prompts on one resized view.
4. Write checkpoints/demo.safetensors, a JSON + Markdown report and an example figure under docs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from model import LSMSeg, Segmenter, build_model, get_config, load_checkpoint, read_metadata, save_checkpoint
from training.datasets.base import IGNORE_INDEX, Sample
from training.datasets.registry import DATASETS
from training.datasets.synthetic import (
    SEEN_CLASSES,
    SHAPES,
    UNSEEN_CLASSES,
    SyntheticScenes,
    object_attribute_accuracy,
)
from training.evaluate import EvaluationOptions, evaluate_dataset
from training.pretrain import (
    ClipPretrainConfig,
    ClipPretrainer,
    SamPretrainConfig,
    SamPretrainer,
    render_scene_bank,
)
from training.prompts import class_prompts, dataset_descriptions
from training.train import TrainConfig, Trainer

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "checkpoints" / "demo.safetensors"
REPORT_DIR = ROOT / "docs"
TEST_DATASET = "synthetic-test"


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
    # (k = 48; profiled), so 1000 iterations cost about 0.6x of 700 without it (README, "The demo model").
    train_k: int = 16
    # Scale jitter of the training crops (the short side goes to 96 × U(range), then a 96² crop): 0.75–1.3x
    # the scenes' own 128 px, around the scales the sliding-window evaluation sees them at (1.25x, 160 px) and
    # its global view (0.75x). CAT-Seg's 0.5–2 would spend a quarter of the crops at below half that scale.
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
    init_checkpoint: Path, output_dir: Path, config: DemoConfig, dataset: Any, **changes: Any
) -> Path:
    """LSMSeg training on the seen classes with the real Trainer; returns its final checkpoint."""
    train_config = TrainConfig(
        preset="demo",
        clip_pretrained=None,
        init=str(init_checkpoint),
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


def evaluate_test(
    model: LSMSeg,
    dataset: Any,
    prompts: str = "bank",
    k: int | None = None,
    sliding_window: bool = True,
    edge_refinement: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Seen/unseen scores of the synthetic test split with one kind of prompts ("bank": the descriptions),
    and where object pixels go ("objects": right class, colour, shape, or background). By default with
    CAT-Seg's sliding window (four 96² windows, stride 64, over the scene resized to 160 px, plus the whole
    scene at 96²), the protocol of CAT-Seg's and the paper's benchmark figures;
    `sliding_window=False` is one 96² view. `edge_refinement=False` scores the model's own boundaries."""
    options = EvaluationOptions(
        prompts=prompts,
        k=k,
        sliding_window=sliding_window,
        edge_refinement=edge_refinement,
        batch_size=8,
        confusion=True,
    )
    result = evaluate_dataset(
        model, dataset, TEST_DATASET, options, seen_names=SEEN_CLASSES, device="cpu", progress=progress
    )
    result["objects"] = object_attribute_accuracy(result.pop("confusion"), dataset.classes)
    result["sliding_window"] = sliding_window
    result["edge_refinement"] = edge_refinement
    return result


# The report's evaluations: name -> (prompts, sliding window, edge refinement).
EVALUATIONS = {
    "bank": ("bank", True, True),
    "template": ("template", True, True),
    "bank_resize": ("bank", False, True),
    "bank_unrefined": ("bank", True, False),
    "bank_resize_unrefined": ("bank", False, False),
}


def evaluate_report(model: LSMSeg, dataset: Any, progress: bool = True) -> dict[str, dict[str, Any]]:
    """`evaluate_test` for each of `EVALUATIONS`: attribute and template prompts with the sliding window,
    attribute prompts on one resized view (the service's default, LSMSEG_SLIDING_WINDOW=false), and both
    views again without edge refinement (what the network's decoder draws by itself)."""
    return {
        name: evaluate_test(
            model, dataset, prompts, sliding_window=sliding, edge_refinement=edges, progress=progress
        )
        for name, (prompts, sliding, edges) in EVALUATIONS.items()
    }


# Figure ----------------------------------------------------------------------------------------------------
def _palette(count: int) -> np.ndarray:
    """Distinct, stable colours per class index (golden-ratio hues)."""
    hues = (np.arange(count) * 0.618034) % 1.0
    hsv = np.stack([hues * 255, np.full(count, 200), np.full(count, 230)], axis=1).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv[None], "HSV").convert("RGB"))[0]


def _colourise(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    image = palette[np.clip(labels, 0, len(palette) - 1)]
    image[labels == IGNORE_INDEX] = 0
    return image


def example_figure(model: LSMSeg, dataset: Any, index: int, path: Path, scale: int = 2) -> Path:
    """Image | ground truth | prediction (attribute prompts), with a legend naming the classes shown."""
    sample = dataset[index]
    classes = list(dataset.classes)
    prompts, _ = class_prompts(classes, model.config.prompts_per_class, "bank", dataset_descriptions(dataset))
    with torch.inference_mode():
        text = model.encode_text(prompts)
    segmenter = Segmenter(model, device="cpu", sliding_window=True)  # as the report's main figures
    prediction = segmenter.segment([sample.image], text).results[0].label_map
    palette = _palette(len(classes))
    panels = [sample.image, _colourise(sample.label, palette), _colourise(prediction, palette)]
    size = sample.image.shape[0] * scale
    shown = sorted(set(np.unique(sample.label).tolist()) | set(np.unique(prediction).tolist()))
    shown = [c for c in shown if c != IGNORE_INDEX]
    font = ImageFont.load_default()
    line = 14
    legend_height = line * (len(shown) + 1) + 8
    canvas = Image.new("RGB", (3 * size + 4 * 8, size + 24 + legend_height), "white")
    draw = ImageDraw.Draw(canvas)
    titles = ("image", "ground truth", "prediction")
    for column, (title, panel) in enumerate(zip(titles, panels, strict=True)):
        x = 8 + column * (size + 8)
        canvas.paste(Image.fromarray(panel).resize((size, size), Image.NEAREST), (x, 20))
        draw.text((x, 4), title, fill="black", font=font)
    top = size + 28
    draw.text((8, top), "classes (* = unseen in LSMSeg training):", fill="black", font=font)
    for row, class_index in enumerate(shown, 1):
        name = classes[class_index]
        y = top + row * line
        draw.rectangle((8, y + 2, 18, y + 11), fill=tuple(int(v) for v in palette[class_index]))
        draw.text((24, y), name + (" *" if name in UNSEEN_CLASSES else ""), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)
    return path


def pick_example(dataset: Any, count: int = 200) -> int:
    """A test scene showing at least two unseen classes and one seen object (so the figure shows both)."""
    unseen = {dataset.classes.index(name) for name in UNSEEN_CLASSES}
    best, best_score = 0, -1
    for index in range(min(count, len(dataset))):
        scene = dataset.scene(index)
        names = scene.segment_names
        score = sum(name in UNSEEN_CLASSES for name in set(names)) + (len(scene.objects) >= 3)
        if score > best_score and any(dataset.classes.index(n) not in unseen for n in names):
            best, best_score = index, score
    return best


# Report ----------------------------------------------------------------------------------------------------
def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown_report(report: dict[str, Any]) -> str:
    scores = report["evaluation"]
    rows = [
        "| prompts | inference | edge refinement | mIoU seen (48) | mIoU unseen (10) | hIoU | mIoU all "
        "| pAcc | CFM recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    prompt_labels = {"bank": "attribute (combined + size, shape, texture, colour)", "template": "template"}
    for name, (prompts, sliding, edges) in EVALUATIONS.items():
        result = scores[name]
        view = "sliding window" if sliding else f"one {result['views']['global']}² view"
        cells = [result[key] for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "pAcc", "cfm_recall")]
        refinement = "yes" if edges else "no"
        rows.append(
            f"| {prompt_labels[prompts]} | {view} | {refinement} | " + " | ".join(map(_percent, cells)) + " |"
        )
    unseen_iou = scores["bank"]["per_class_iou"]
    per_class = ", ".join(f"{name} {_percent(unseen_iou[name])}" for name in UNSEEN_CLASSES)
    objects = scores["bank"]["objects"]
    windows = scores["bank"]["views"]
    timing = report["seconds"]
    reused = report["pretraining_reused_from"]
    reuse_note = f" (pretraining reused from `{reused}`, timed when it ran)" if reused else ""
    return "\n".join(
        [
            "# Demo model report",
            "",
            f"Command: `{report['command']}` (seed {report['config']['seed']}, "
            f"{report['config']['threads']} threads, {report['machine']}).",
            "",
            f"Wall time {timing['total'] / 60:.1f} min: rendering {timing['render'] / 60:.1f} min, CLIP "
            f"pretraining {timing['clip_pretrain'] / 60:.1f} min, SAM pretraining "
            f"{timing['sam_pretrain'] / 60:.1f} min, LSMSeg training {timing['train'] / 60:.1f} min, "
            f"evaluation {timing['evaluate'] / 60:.1f} min{reuse_note}.",
            f"Checkpoint: `{report['checkpoint']}`, {report['checkpoint_mb']:.1f} MB.",
            "",
            f"Held-out test split `{TEST_DATASET}` ({scores['bank']['images']} scenes, 58 classes, CFM "
            f"k = {scores['bank']['cfm_k']}). Sliding window: CAT-Seg's evaluation protocol, "
            f"{windows['windows']} windows of {windows['window']}² (stride {windows['stride']}) over each "
            f"scene resized to {windows['resized']} px and the whole scene at {windows['global']}², "
            f"averaged; one {windows['global']}² view: the service's default.",
            "",
            *rows,
            "",
            f"Unseen classes, IoU with attribute prompts: {per_class}.",
            "",
            "Object pixels (all 48 colour–shape classes), attribute prompts, sliding window: "
            f"{_percent(objects['exact'])} % get the exact class, "
            f"{_percent(objects['colour'])} % the right colour, "
            f"{_percent(objects['shape'])} % the right shape (chance given the colour: "
            f"{_percent(1 / len(SHAPES))} %), {_percent(objects['stuff'])} % a background class.",
            "",
        ]
    )


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
            "command": "python -m training.demo",
            "seed": config.seed,
            "test": TEST_DATASET,
            **summary,
        },
        **read_metadata(final)["extra"],  # the Trainer's record: classes, prompt sources, iterations
    }
    output = save_checkpoint(model, output, extra=extra)
    figure = example_figure(model, test_set, pick_example(test_set), report_dir / "demo_example.png")
    total = pretrain_seconds + time.perf_counter() - after_pretrain
    report = {
        "command": "python -m training.demo",
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=DEMO_CHECKPOINT, help="checkpoint to write")
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR, help="report and figure folder")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "demo", help="intermediate files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--init",
        type=Path,
        help="reuse the pretrained backbones of an earlier run (its work dir's init.safetensors) instead of "
        "pretraining again; it must come from the same pretraining settings",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = DemoConfig(seed=args.seed, threads=args.threads)
    report = run(
        config, args.output, args.report_dir, args.work_dir, progress=not args.no_progress, init=args.init
    )
    print(markdown_report(report))


if __name__ == "__main__":
    main()
