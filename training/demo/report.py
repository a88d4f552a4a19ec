"""The demo's evaluation on the synthetic test split and its Markdown report."""

from __future__ import annotations

from typing import Any

from lsmseg.model import LSMSeg
from lsmseg.training.datasets.synthetic import SEEN_CLASSES, SHAPES, UNSEEN_CLASSES, object_attribute_accuracy
from lsmseg.training.evaluate import EvaluationOptions, evaluate_dataset

TEST_DATASET = "synthetic-test"


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
