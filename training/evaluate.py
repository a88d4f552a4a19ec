"""Zero-shot evaluation: mIoU, pixel accuracy and per-class IoU per dataset, seen/unseen split, CFM recall.

    lsmseg-evaluate --checkpoint runs/lsmseg/final.safetensors \
        --datasets ade847 pc459 ade150 pc59 voc20 voc20b --sliding-window
    lsmseg-evaluate --checkpoint checkpoints/demo.safetensors --datasets synthetic-test
    lsmseg-evaluate --checkpoint catseg-b16.safetensors --datasets ade847 pc459 --protocol catseg

The prompt mode is the checkpoint's own (an imported CAT-Seg checkpoint records "catseg") unless --prompt-mode
says otherwise; --protocol catseg scores as CAT-Seg's own evaluation does (model/catseg_protocol.py).

Prints a Markdown table and writes JSON (default: evaluation.json next to the checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lsmseg.model import LSMSeg, Segmenter, load_checkpoint
from lsmseg.model.edge_refinement import DEFAULT_EDGE_REFINEMENT
from lsmseg.model.segmenter import PROTOCOLS
from lsmseg.prompt_cache.modes import PROMPT_MODES, class_encoder, recorded_prompt_mode, resolve_prompt_mode
from lsmseg.prompt_cache.names import normalise_name
from lsmseg.training.datasets import IGNORE_INDEX, SEEN_CLASSES, build_dataset
from lsmseg.training.datasets.base import SegmentationDataset
from lsmseg.training.datasets.voc import VOC20B_CATSEG_CLASSES, collapse_background
from lsmseg.training.datasets.vocabularies import load_classes
from lsmseg.training.metrics import ConfusionMatrix
from lsmseg.training.prompts import class_prompts, dataset_descriptions


@dataclass
class EvaluationOptions:
    prompts: str = "bank"  # "bank" or "template" (see training.prompts.class_prompts)
    prompt_mode: str | None = None  # prompt_cache.modes; None: the mode the checkpoint records
    protocol: str = "lsmseg"  # "catseg": CAT-Seg's evaluation (fp32, no edge refinement, own windows)
    k: int | None = None  # CFM k; default the model's
    sliding_window: bool = False  # lsmseg protocol only
    edge_refinement: bool = True  # snap boundaries to image edges (model/edge_refinement.py), as the service
    batch_size: int = 4
    limit: int | None = None  # evaluate the first N images only
    require_gt: bool = True  # detectron2's convention, which published OVSS numbers use
    confusion: bool = False  # add the C×C pixel counts (ground truth × prediction) as "confusion"


def prompt_classes(dataset_name: str, classes: Sequence[str]) -> list[str]:
    """The class names the model is asked about. VOC-20b is prompted with CAT-Seg's 59 names (20 objects +
    PC-59 background classes); predictions beyond the 20 objects then count as background."""
    return list(VOC20B_CATSEG_CLASSES) if dataset_name == "voc20b" else list(classes)


def seen_indices(classes: Sequence[str], seen_names: Collection[str]) -> list[int]:
    seen = {normalise_name(name) for name in seen_names}
    return [index for index, name in enumerate(classes) if normalise_name(name) in seen]


def model_prompt_mode(model: LSMSeg, override: str | None = None) -> str:
    """The prompt mode to evaluate `model` with: `override`, else what its checkpoint records."""
    recorded = recorded_prompt_mode(getattr(model, "checkpoint_metadata", {}))
    return resolve_prompt_mode(recorded, override, model.config.prompts_per_class)


def evaluate_dataset(
    model: LSMSeg,
    dataset: SegmentationDataset,
    dataset_name: str,
    options: EvaluationOptions,
    seen_names: Collection[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of one dataset; `seen_names` (training classes) adds seen/unseen mIoU and hIoU."""
    classes = list(dataset.classes)
    asked = prompt_classes(dataset_name, classes)
    descriptions = dataset_descriptions(dataset) if asked == classes else None
    mode = model_prompt_mode(model, options.prompt_mode)
    per_class = model.config.prompts_per_class
    prompts, sources = class_prompts(asked, per_class, options.prompts, descriptions, mode)
    segmenter = Segmenter(
        model,
        device=device,
        sliding_window=options.sliding_window,
        edge_refinement=DEFAULT_EDGE_REFINEMENT if options.edge_refinement else None,
        protocol=options.protocol,
    )
    with torch.inference_mode():
        text = class_encoder(mode, model.to(segmenter.device).encode_text)(prompts)
    matrix = ConfusionMatrix(len(classes), class_names=classes)
    kept_gt, total_gt = 0, 0
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    bar = tqdm(total=count, desc=dataset_name, unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, count, options.batch_size):
        samples = [dataset[index] for index in range(start, min(start + options.batch_size, count))]
        results = segmenter.segment([sample.image for sample in samples], text, k=options.k).results
        for sample, result in zip(samples, results, strict=True):
            prediction = result.label_map
            if dataset_name == "voc20b":
                prediction = collapse_background(prediction)
            matrix.update(prediction, sample.label)
            present = np.unique(sample.label[sample.label != IGNORE_INDEX])
            if dataset_name == "voc20b":
                present = present[present < 20]  # "background" has no single prompt to be kept
            kept_gt += int(np.isin(present, result.selected).sum())
            total_gt += len(present)
        bar.update(len(samples))
    bar.close()
    seen = seen_indices(classes, seen_names) if seen_names is not None else None
    summary = matrix.summary(seen=seen, require_gt=options.require_gt)
    summary.update(
        dataset=dataset_name,
        images=count,
        classes=len(classes),
        prompt_mode=mode,
        prompt_sources=sources,
        protocol=options.protocol,
        cfm_k=options.k or model.config.cfm_k,
        cfm_recall=kept_gt / total_gt if total_gt else float("nan"),
        views=segmenter.views(),
    )
    if options.confusion:
        summary["confusion"] = matrix.matrix.tolist()
    return summary


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    with_split = any("mIoU_seen" in result for result in results)
    header = ["dataset", "images", "classes", "mIoU", "pAcc", "CFM recall"]
    header += ["mIoU seen", "mIoU unseen", "hIoU"] if with_split else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        cells = [result["dataset"], str(result["images"]), str(result["classes"])]
        cells += [f"{100 * result[key]:.1f}" for key in ("mIoU", "pAcc", "cfm_recall")]
        if with_split:
            cells += [
                f"{100 * result.get(key, float('nan')):.1f}" for key in ("mIoU_seen", "mIoU_unseen", "hIoU")
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seen_names(spec: str | None, dataset_name: str) -> list[str] | None:
    """--seen: a vocabulary (coco171 is the paper's training set) or 'auto' (synthetic: its train split)."""
    if spec is None:
        return None
    if spec == "auto":
        return list(SEEN_CLASSES) if dataset_name.startswith("synthetic") else load_classes("coco171")
    return load_classes(spec)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--sam-checkpoint", type=Path, help="official SAM .pth when the checkpoint omits SAM")
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument(
        "--root", help="dataset root (default: $LSMSEG_DATASETS, $DETECTRON2_DATASETS, ./datasets)"
    )
    parser.add_argument("--prompts", choices=("bank", "template"), default="bank")
    parser.add_argument(
        "--prompt-mode", choices=PROMPT_MODES, help="override the checkpoint's prompt mode (default: its own)"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="lsmseg",
        help="catseg: CAT-Seg's evaluation (640 canvas, 384 windows, fp32, no edge refinement)",
    )
    parser.add_argument("--k", type=int, help="CFM k (default: the model's)")
    parser.add_argument("--sliding-window", action="store_true", help="lsmseg protocol: add sliding windows")
    parser.add_argument(
        "--no-edge-refinement", action="store_true", help="score the model's own boundaries (no snapping)"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, help="first N images of each dataset")
    parser.add_argument(
        "--seen", help="vocabulary of the training classes, or 'auto', for a seen/unseen split"
    )
    parser.add_argument("--device")
    parser.add_argument("--out", type=Path, help="JSON output (default: <checkpoint>.evaluation.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    model = load_checkpoint(args.checkpoint, sam_checkpoint=args.sam_checkpoint)
    try:
        model_prompt_mode(model, args.prompt_mode)
    except ValueError as exc:
        parser.error(str(exc))
    options = EvaluationOptions(
        prompts=args.prompts,
        prompt_mode=args.prompt_mode,
        protocol=args.protocol,
        k=args.k,
        sliding_window=args.sliding_window,
        edge_refinement=not args.no_edge_refinement,
        batch_size=args.batch_size,
        limit=args.limit,
    )
    results = []
    for name in args.datasets:
        dataset = build_dataset(name, root=args.root)
        seen = _seen_names(args.seen, name)
        results.append(evaluate_dataset(model, dataset, name, options, seen, device=args.device))
    print(markdown_table(results))
    out = args.out or args.checkpoint.with_suffix(".evaluation.json")
    out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
