"""Where a demo checkpoint loses mIoU on the synthetic test split: at boundaries, or on whole objects.

    python -m lsmseg.training.error_breakdown checkpoints/demo.safetensors --images 200

One pass of the Segmenter with the sliding window and edge refinement (the demo report's main figures;
`--no-edge-refinement`: the network's own boundaries), scored three ways: every pixel; without the pixels
within 1, 2 or 3 px of a label boundary (the most that perfect boundaries could add); and with every
ground-truth segment given the class most of its pixels got (what the model would score if it only ever erred
by whole objects). Then which objects lose: the share of object pixels that get the object's exact class, by
the object's size, fill, shape and colour. Prints Markdown tables and writes JSON (default:
runs/error_breakdown/<checkpoint name>.json, outside tracked folders).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lsmseg.model import LSMSeg, Segmenter, load_checkpoint
from lsmseg.model.edge_refinement import DEFAULT_EDGE_REFINEMENT
from lsmseg.training.datasets.base import IGNORE_INDEX
from lsmseg.training.datasets.synthetic import (
    SEEN_CLASSES,
    SyntheticSample,
    SyntheticScenes,
    instance_boundaries,
)
from lsmseg.training.evaluate import EvaluationOptions, seen_indices
from lsmseg.training.metrics import ConfusionMatrix
from lsmseg.training.prompts import class_prompts, dataset_descriptions

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[1] / "runs" / "error_breakdown"
BANDS = (1, 2, 3)  # px left out around label boundaries
OBJECT_ATTRIBUTES = ("size", "fill", "shape", "colour")


def boundary_distance(label: np.ndarray, limit: int) -> np.ndarray:
    """Chessboard distance of each pixel to the nearest pixel that touches another label (0 on those pixels),
    capped at limit + 1."""
    edge = instance_boundaries(label)
    distance = np.where(edge, 0, limit + 1)
    reached = edge
    for step in range(1, limit + 1):
        padded = np.pad(reached, 1)
        grown = np.zeros_like(reached)
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]]
        distance[grown & ~reached] = step
        reached = grown
    return distance


def majority_vote(prediction: np.ndarray, instances: np.ndarray, num_classes: int) -> np.ndarray:
    """Every instance id takes the class most of its pixels were predicted as."""
    counts = np.bincount(
        (instances.astype(np.int64) * num_classes + prediction).ravel(),
        minlength=(int(instances.max()) + 1) * num_classes,
    ).reshape(-1, num_classes)
    return counts.argmax(axis=1)[instances]


class ObjectHits:
    """Visible pixels of objects and how many got the object's exact class, per value of each attribute."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, list[int]]] = {name: {} for name in OBJECT_ATTRIBUTES}

    def update(self, sample: SyntheticSample, prediction: np.ndarray, classes: list[str]) -> None:
        first_object_id = len(sample.scene.stuff) + 1  # see synthetic.Scene for the segment ids
        for offset, obj in enumerate(sample.scene.objects):
            visible = sample.instances == first_object_id + offset
            pixels = int(visible.sum())
            if pixels == 0:  # painted over by later objects
                continue
            exact = int((prediction[visible] == classes.index(obj.class_name)).sum())
            for name in OBJECT_ATTRIBUTES:
                tally = self.counts[name].setdefault(getattr(obj, name), [0, 0, 0])
                tally[0] += 1
                tally[1] += pixels
                tally[2] += exact

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """attribute -> value -> objects, pixels and the exact share of those pixels (values sorted)."""
        return {
            name: {
                value: {"objects": objects, "pixels": pixels, "exact": exact / pixels}
                for value, (objects, pixels, exact) in sorted(values.items())
            }
            for name, values in self.counts.items()
        }


def breakdown(
    model: LSMSeg, dataset: SyntheticScenes, edge_refinement: bool = True, progress: bool = True
) -> dict[str, Any]:
    classes = list(dataset.classes)
    prompts, _ = class_prompts(classes, model.config.prompts_per_class, "bank", dataset_descriptions(dataset))
    with torch.inference_mode():
        text = model.eval().encode_text(prompts)
    refinement = DEFAULT_EDGE_REFINEMENT if edge_refinement else None
    segmenter = Segmenter(model, device="cpu", sliding_window=True, edge_refinement=refinement)
    matrices = {name: ConfusionMatrix(len(classes)) for name in ("all", *map(str, BANDS), "majority")}
    kept_pixels = dict.fromkeys(map(str, BANDS), 0)
    objects = ObjectHits()
    for index in tqdm(range(len(dataset)), desc="error breakdown", unit="img", disable=not progress):
        sample = dataset[index]
        prediction = segmenter.segment([sample.image], text).results[0].label_map.astype(np.int64)
        label = sample.label
        matrices["all"].update(prediction, label)
        distance = boundary_distance(label, max(BANDS))
        for band in BANDS:
            near = distance <= band
            matrices[str(band)].update(prediction, np.where(near, IGNORE_INDEX, label))
            kept_pixels[str(band)] += int((~near & (label != IGNORE_INDEX)).sum())
        matrices["majority"].update(majority_vote(prediction, sample.instances, len(classes)), label)
        objects.update(sample, prediction, classes)
    seen = seen_indices(classes, SEEN_CLASSES)
    scores = {}
    for name, matrix in matrices.items():
        summary = matrix.summary(seen=seen, require_gt=EvaluationOptions.require_gt)  # as evaluate_dataset
        scores[name] = {key: summary[key] for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc")}
    return {
        "images": len(dataset),
        "views": segmenter.views(),
        "edge_refinement": edge_refinement,
        "scores": scores,
        "kept_pixels": kept_pixels,
        "objects": objects.summary(),
    }


def markdown(result: dict[str, Any]) -> str:
    labels = {"all": "every pixel", "majority": "each segment takes its majority class"}
    labels.update({str(band): f"without pixels within {band} px of a boundary" for band in BANDS})
    lines = ["| scored | mIoU seen | mIoU unseen | hIoU |", "|---|---|---|---|"]
    for name, scores in result["scores"].items():
        cells = (f"{100 * scores[key]:.1f}" for key in ("mIoU_seen", "mIoU_unseen", "hIoU"))
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    lines += ["", "| object attribute | value | objects | pixels with the exact class |", "|---|---|---|---|"]
    for name, values in result["objects"].items():
        for value, tally in values.items():
            lines.append(f"| {name} | {value} | {tally['objects']} | {100 * tally['exact']:.1f} % |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lsmseg.training.error_breakdown",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a demo-preset checkpoint")
    parser.add_argument("--images", type=int, default=500, help="first test scenes (the split has 500)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--no-edge-refinement", action="store_true", help="score the model's own boundaries (no snapping)"
    )
    parser.add_argument("--output", type=Path, help="JSON file (default: runs/error_breakdown/<name>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scenes = SyntheticScenes("test", num_images=args.images)
    result = breakdown(load_checkpoint(args.checkpoint), scenes, edge_refinement=not args.no_edge_refinement)
    result["checkpoint"] = str(args.checkpoint)
    output = args.output or DEFAULT_OUTPUT_DIR / f"{args.checkpoint.stem}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
