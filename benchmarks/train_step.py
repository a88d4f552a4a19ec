"""Training throughput: iterations/s and peak memory of the real training step; the 80k-iteration estimate.

Random weights (the architecture decides the cost), synthetic scenes at the preset's crop size.

    python benchmarks/train_step.py                                   # tiny on CPU
    python benchmarks/train_step.py --preset vit-b16-sam-l --device cuda --precision bf16 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lsmseg.training.datasets import SyntheticScenes
from lsmseg.training.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results" / "train_step.json"
PAPER_ITERATIONS = 80_000


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (after 2 warm-up ones)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as output:
        config = TrainConfig(
            preset=args.preset,
            clip_pretrained=None,
            iterations=args.iterations + 2,
            batch_size=args.batch_size,
            precision=args.precision,
            device=args.device,
            num_workers=0,
            output_dir=output,
        )
        image_size = 384 if args.preset != "tiny" else 64
        trainer = Trainer(
            config, dataset=SyntheticScenes("train", num_images=64, image_size=image_size, seed=0)
        )
        device = trainer.device
        batches = trainer._batches()
        for _ in range(2):
            trainer.train_iteration(batches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            trainer.train_iteration(batches)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        trainer.close()

    median = statistics.median(seconds)
    crop = trainer.spec.crop_size
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    report = {
        "preset": args.preset,
        "device": name,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "crop_size": crop,
        "classes": len(trainer.prompts),
        "median_step_s": median,
        "iterations_per_s": 1 / median,
        "images_per_s": args.batch_size / median,
        "peak_memory_gib": peak_memory_bytes(device) / 2**30,
        "estimated_80k_hours": PAPER_ITERATIONS * median / 3600,
    }
    print("| preset | device | precision | batch | crop | classes | s/step | it/s | peak GiB | 80k h |")
    print("|" + "---|" * 10)
    print(
        f"| {args.preset} | {name} | {args.precision} | {args.batch_size} | {crop} | {report['classes']} | "
        f"{median:.3f} | {1 / median:.2f} | {report['peak_memory_gib']:.2f} | "
        f"{report['estimated_80k_hours']:.1f} |"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
