"""What edge refinement costs: Segmenter latency with and without it, per image size and view.

The demo checkpoint on one synthetic test scene, resized to each size (a photo-sized input costs the model the
same, and the refinement runs at most `max_side` px a side). Both settings are timed in the same run, one
after the other, so their ratio holds on a noisy machine.

    python benchmarks/edge_refinement.py                  # CPU
    python benchmarks/edge_refinement.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lsmseg.model import Segmenter, load_checkpoint
from lsmseg.model.edge_refinement import DEFAULT_EDGE_REFINEMENT
from lsmseg.training.datasets.synthetic import SyntheticScenes
from lsmseg.training.prompts import class_prompts, dataset_descriptions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "edge_refinement.json"


def median_seconds(segmenter: Segmenter, image: np.ndarray, text: torch.Tensor, repeats: int) -> dict:
    """Median whole-call and postprocess seconds over `repeats` calls after one warm-up."""
    segmenter.segment([image], text)
    totals, post = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        timings = segmenter.segment([image], text).timings
        totals.append(time.perf_counter() - start)
        post.append(timings["postprocess"])
    return {"total_s": statistics.median(totals), "postprocess_s": statistics.median(post)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo.safetensors")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_checkpoint(args.checkpoint)
    scenes = SyntheticScenes("test", num_images=1)
    prompts, _ = class_prompts(
        list(scenes.classes), model.config.prompts_per_class, "bank", dataset_descriptions(scenes)
    )
    with torch.inference_mode():
        text = model.to(args.device).eval().encode_text(prompts)
    scene = Image.fromarray(scenes[0].image)
    rows = []
    for sliding in (False, True):
        for size in args.sizes:
            image = np.asarray(scene.resize((size, size), Image.BILINEAR))
            row = {"size": size, "sliding_window": sliding, "classes": len(prompts)}
            for name, refinement in (("unrefined", None), ("refined", DEFAULT_EDGE_REFINEMENT)):
                segmenter = Segmenter(
                    model, device=args.device, sliding_window=sliding, edge_refinement=refinement
                )
                row[name] = median_seconds(segmenter, image, text, args.repeats)
            row["ratio"] = row["refined"]["total_s"] / row["unrefined"]["total_s"]
            rows.append(row)

    print(
        f"device {args.device}, {args.threads} threads, demo checkpoint, k = {model.config.cfm_k}, "
        f"refinement at most {DEFAULT_EDGE_REFINEMENT.max_side} px a side"
    )
    print("| view | image | without (ms) | with (ms) | refinement + label map (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        view = "sliding window" if row["sliding_window"] else "one view"
        print(
            f"| {view} | {row['size']}² | {1000 * row['unrefined']['total_s']:.1f} | "
            f"{1000 * row['refined']['total_s']:.1f} | {1000 * row['refined']['postprocess_s']:.1f} | "
            f"{row['ratio']:.2f}× |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "device": args.device,
        "threads": args.threads,
        "checkpoint": str(args.checkpoint),
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
