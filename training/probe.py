"""What CLIP's patch features alone know about the synthetic classes: each pixel takes the class whose
prompts its patch is most similar to (the cost map's argmax, no head), scored on the synthetic test split.

    python -m lsmseg.training.probe runs/demo/init.safetensors   # the backbones, before LSMSeg training
    python -m lsmseg.training.probe checkpoints/demo.safetensors  # after it (CLIP q/v tuned)

The head sees a class only through this cost map, so object shape it cannot find here it cannot segment.
Prints a Markdown table and writes JSON (default: runs/probe/<checkpoint name>.json, outside tracked folders).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lsmseg.model import LSMSeg, load_checkpoint
from lsmseg.model.cfm import cost_volume
from lsmseg.training.datasets.synthetic import SEEN_CLASSES, SyntheticScenes, object_attribute_accuracy
from lsmseg.training.evaluate import seen_indices
from lsmseg.training.metrics import ConfusionMatrix
from lsmseg.training.prompts import class_prompts, dataset_descriptions

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[1] / "runs" / "probe"


@torch.inference_mode()
def zero_shot_labels(model: LSMSeg, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """images B×3×H×W in [0, 1], text C×P×D -> B×H×W class indices from the CLIP cost map alone."""
    size = model.config.image_size
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    cost = cost_volume(model.clip_features(resized).dense, text).mean(dim=2)  # B×C×h×w, mean over prompts
    return F.interpolate(cost, size=images.shape[-2:], mode="bilinear", align_corners=False).argmax(dim=1)


def probe(
    model: LSMSeg,
    dataset: SyntheticScenes,
    prompts: str = "bank",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """mIoU (seen / unseen) and where object pixels go, for the CLIP cost map's argmax."""
    classes = list(dataset.classes)
    descriptions = dataset_descriptions(dataset)
    prompt_lists, _ = class_prompts(classes, model.config.prompts_per_class, prompts, descriptions)
    model.eval()
    with torch.inference_mode():
        text = model.encode_text(prompt_lists)
    matrix = ConfusionMatrix(len(classes), class_names=classes)
    for start in tqdm(range(0, len(dataset), batch_size), desc="probe", unit="batch", disable=not progress):
        samples = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
        images = torch.from_numpy(np.stack([sample.image for sample in samples])).permute(0, 3, 1, 2) / 255
        labels = zero_shot_labels(model, images, text)
        matrix.update(labels.numpy(), np.stack([sample.label for sample in samples]))
    summary = matrix.summary(seen=seen_indices(classes, SEEN_CLASSES))
    return {
        "images": len(dataset),
        "prompts": prompts,
        **{key: summary[key] for key in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc")},
        "objects": object_attribute_accuracy(matrix.matrix, classes),
    }


def markdown(result: dict[str, Any]) -> str:
    objects = result["objects"]
    cells = [result[key] for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc")]
    cells += [objects[key] for key in ("exact", "colour", "shape", "stuff")]
    header = "| mIoU seen | mIoU unseen | hIoU | pAcc | objects: exact | colour | shape | background |"
    return "\n".join([header, "|" + "---|" * 8, "| " + " | ".join(f"{100 * v:.1f}" for v in cells) + " |"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lsmseg.training.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a demo-preset checkpoint")
    parser.add_argument("--images", type=int, default=500, help="test scenes (the registry's split has 500)")
    parser.add_argument("--prompts", choices=("bank", "template"), default="bank")
    parser.add_argument("--output", type=Path, help="JSON file (default: runs/probe/<checkpoint name>.json)")
    args = parser.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    result = probe(model, SyntheticScenes("test", num_images=args.images), args.prompts)
    output = args.output or DEFAULT_OUTPUT_DIR / f"{args.checkpoint.stem}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"checkpoint": str(args.checkpoint), **result}, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
