"""The paper's ablations (Tables 2, 4, 5, 6) in miniature: seen / unseen mIoU on the synthetic test split.

    python -m lsmseg.training.demo            # first: the demo checkpoint and runs/demo/init.safetensors
    python benchmarks/ablations.py     # then this (--train sam fusion: only those retrain; --train: none)

- Table 4, CFM k ∈ {4, 8, 16, all}: inference only, on checkpoints/demo.safetensors; and a pair of short
  trainings with the CFM (the demo's k = 16) and without it (every seen class), with their time.
- Table 2, prompts: attribute vs template prompts at inference on the demo checkpoint, and a pair of short
  trainings that train and evaluate with one kind each (the paper's setting).
- Table 5, SAM: with vs without SAM features (fusion "none": no SAM encoder at all); short trainings.
- Table 6, fusion: weight generator vs mean vs concat; short trainings.
Short trainings start the head from the demo run's pretrained backbones (its init checkpoint) and run
`--iterations` steps (default 350; the demo trains 500) with everything else as the demo trains.
Every row is scored as the demo report's main figures are (sliding window). Prints a Markdown table and
writes JSON (benchmarks/results/ablations.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from lsmseg.model import build_model, load_checkpoint, save_checkpoint
from lsmseg.training.datasets.synthetic import SyntheticScenes
from lsmseg.training.demo import (
    DEMO_CHECKPOINT,
    ROOT,
    TEST_DATASET,
    DemoConfig,
    RenderedDataset,
    evaluate_test,
    train_head,
)

RESULTS = Path(__file__).parent / "results" / "ablations.json"
SHORT_ITERATIONS = 350
TABLES = ("cfm", "prompts", "sam", "fusion")  # --train choices: the paper's Tables 4, 2, 5 and 6


def variant_init(init: Path, fusion: str, folder: Path) -> Path:
    """The demo's pretrained backbones in a model whose head uses `fusion` ("none": no SAM encoder)."""
    base = load_checkpoint(init)
    config = base.config.replace(
        head=dataclasses.replace(base.config.head, fusion=fusion),
        sam=None if fusion == "none" else base.config.sam,
    )
    torch.manual_seed(0)
    model = build_model(config)
    model.clip.load_state_dict(base.clip.state_dict())
    if model.sam is not None:
        model.sam.load_state_dict(base.sam.state_dict())
    return save_checkpoint(model, folder / f"init-{fusion}.safetensors", extra={"stage": "ablation init"})


def score(model: Any, dataset: Any, prompts: str = "bank", k: int | None = None) -> dict[str, float]:
    result = evaluate_test(model, dataset, prompts, k)
    return {key: result[key] for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "cfm_recall")}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| paper table | variant | training | mIoU seen | mIoU unseen | hIoU |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{100 * row[key]:.1f}" for key in ("mIoU_seen", "mIoU_unseen", "hIoU")]
        lines.append(f"| {row['table']} | {row['variant']} | {row['training']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--init", type=Path, default=ROOT / "runs" / "demo" / "init.safetensors",
                        help="the demo run's pretrained-backbone checkpoint")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "ablations")
    parser.add_argument("--iterations", type=int, default=SHORT_ITERATIONS)
    parser.add_argument("--test-images", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--train-images", type=int, default=DemoConfig().train_images,
                        help="seen-class scenes of the short trainings (default: the demo's)")
    parser.add_argument("--train", nargs="*", choices=TABLES, default=list(TABLES),
                        help="tables whose rows retrain the head (default all; none: inference rows only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    test = SyntheticScenes("test", num_images=args.test_images or 500)
    demo = load_checkpoint(args.checkpoint)
    demo_config = DemoConfig()
    full = f"demo ({demo_config.iterations} it)"
    rows: list[dict[str, Any]] = []

    def add(table: str, variant: str, training: str, scores: dict[str, float]) -> None:
        rows.append({"table": table, "variant": variant, "training": training, **scores})
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)

    every = len(test.classes)  # k ≥ C keeps every class (k=None would mean the model's default)
    for k in (4, 8, 16, every):
        label = f"k = all ({k})" if k == every else f"k = {k}"
        add("4 (CFM)", label + (" (default)" if k == demo.config.cfm_k else ""), full, score(demo, test, k=k))
    add("2 (prompts)", "template prompts at inference", full, score(demo, test, prompts="template"))

    if args.train:
        if not args.init.is_file():
            raise SystemExit(f"{args.init} is missing: run `python -m lsmseg.training.demo` first")
        args.work_dir.mkdir(parents=True, exist_ok=True)
        short = f"short ({args.iterations} it)"
        train_set = RenderedDataset(SyntheticScenes("train", num_images=args.train_images))
        config = dataclasses.replace(demo_config, iterations=args.iterations)
        train_k, every_seen = demo_config.train_k, len(train_set.classes)
        default = ("weight", "bank", train_k)
        # Each table's paper name and rows: (label, (fusion, prompts, training k) of its short training).
        without_cfm, template = ("weight", "bank", every_seen), ("weight", "template", train_k)
        tables = {
            "cfm": ("4 (CFM)", [(f"CFM in training, k = {train_k} (as the demo)", default),
                                (f"no CFM in training (k = all {every_seen})", without_cfm)]),
            "prompts": ("2 (prompts)", [("attribute prompts (train + test)", default),
                                        ("template prompts (train + test)", template)]),
            "sam": ("5 (SAM)", [("without SAM (fusion none)", ("none", "bank", train_k)),
                                ("with SAM (weight generator)", default)]),
            "fusion": ("6 (fusion)", [("mean", ("mean", "bank", train_k)),
                                      ("concat", ("concat", "bank", train_k)),
                                      ("weight generator", default)]),
        }
        results: dict[tuple[str, str, int], dict[str, float]] = {}
        inits: dict[str, Path] = {}  # one initial checkpoint per fusion, shared by its trainings
        for fusion, prompts, k in dict.fromkeys(v for table in args.train for _, v in tables[table][1]):
            if fusion not in inits:
                inits[fusion] = variant_init(args.init, fusion, args.work_dir)
            output = args.work_dir / f"{fusion}-{prompts}-k{k}"
            train_started = time.perf_counter()
            final = train_head(inits[fusion], output, config, train_set, prompts=prompts, cfm_k=k)
            minutes = (time.perf_counter() - train_started) / 60
            results[fusion, prompts, k] = {**score(load_checkpoint(final), test, prompts=prompts),
                                           "train_minutes": minutes}
        for table in args.train:
            paper_table, variants = tables[table]
            for name, variant in variants:
                result = results[variant]
                add(paper_table, f"{name}: {result['train_minutes']:.1f} min", short, result)

    print()
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "test": f"{TEST_DATASET} ({len(test)} scenes)",
        "checkpoint": str(args.checkpoint),
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
