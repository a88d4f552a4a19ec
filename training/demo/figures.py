"""The demo's example figure: image | ground truth | prediction, with a legend of the classes shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lsmseg.model import LSMSeg, Segmenter
from lsmseg.model.palette import palette as class_palette
from lsmseg.training.datasets.base import IGNORE_INDEX
from lsmseg.training.datasets.synthetic import UNSEEN_CLASSES
from lsmseg.training.prompts import class_prompts, dataset_descriptions


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
    palette = class_palette(len(classes))
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
