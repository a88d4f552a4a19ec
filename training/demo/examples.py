"""Example scenes for the try-it page and the README's first request: synthetic test scenes of the kind the
demo model knows, each with a class list naming what is in the scene and two classes that are not.

    python -m lsmseg.training.demo.examples      # writes service/static/examples/ (PNGs and examples.json)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lsmseg.training.datasets.synthetic import SyntheticScenes

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "service" / "static" / "examples"
_SCALE = 2  # 128 px scenes shown at 256 px; nearest-neighbour keeps their edges sharp


@dataclass(frozen=True)
class Example:
    name: str
    index: int  # scene of SyntheticScenes("test") (seed 0)
    absent: tuple[str, str]  # classes to ask for that the scene does not hold


# Chosen among the first 40 test scenes: several objects, some of them of classes unseen in training.
EXAMPLES = (
    Example("shapes-on-a-brick-floor", 26, ("sky", "red star")),
    Example("circle-and-triangle-on-bricks", 5, ("sand", "orange square")),
    Example("red-circle-between-walls", 36, ("grass", "blue ring")),
)


def example_classes(scenes: SyntheticScenes, example: Example) -> list[str]:
    present = sorted(set(scenes.scene(example.index).segment_names))
    return [*present, *example.absent]


def render_example(scenes: SyntheticScenes, example: Example) -> Image.Image:
    image = scenes[example.index].image
    return Image.fromarray(np.repeat(np.repeat(image, _SCALE, axis=0), _SCALE, axis=1))


def write_examples(folder: Path = EXAMPLES_DIR) -> list[dict[str, object]]:
    """The PNGs and examples.json ({"examples": [{"name", "file", "classes"}]}) in `folder`."""
    scenes = SyntheticScenes("test", num_images=max(example.index for example in EXAMPLES) + 1)
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for example in EXAMPLES:
        file = f"{example.name}.png"
        render_example(scenes, example).save(folder / file, optimize=True)
        listed.append({"name": example.name, "file": file, "classes": example_classes(scenes, example)})
    (folder / "examples.json").write_text(json.dumps({"examples": listed}, indent=1) + "\n")
    return listed


if __name__ == "__main__":
    for entry in write_examples():
        print(entry["file"], ", ".join(entry["classes"]))
