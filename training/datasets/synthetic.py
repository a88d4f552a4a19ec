"""Synthetic scenes with exact labels, for training and scoring a small open-vocabulary demo model.

Classes (58) are named from attribute words:
- 48 things "<colour> <shape>": colours red green blue yellow purple orange white black × shapes circle square
  triangle star ring cross. Each object also has a size (small / large) and a fill (solid / striped / dotted /
  checkered) that vary freely and are not part of the class.
- 10 stuff backgrounds: grass, water, sky, sand, and "<material> <surface>" for brick / stone / wooden ×
  wall / floor (walls are laid in horizontal courses, floors in vertical runs).

Open-vocabulary split (`UNSEEN_CLASSES`, 10 classes): 8 new colour–shape combinations, one per colour
(red cross, green triangle, blue ring, yellow square, purple star, orange circle, white star, black triangle),
and 2 stuff classes held out whole (wooden wall, brick floor). Every word of an unseen name occurs in some
seen name, so an unseen class is a new combination of known words. The "train" split never draws an unseen
class (its `classes` are the 48 `SEEN_CLASSES`); the "test" split draws from all 58 (`CLASSES`), an unseen one
with probability `unseen_fraction` per object and per stuff region, so seen and unseen mIoU both rest on
enough pixels.

Items are generated on demand from (seed, split, index): the same arguments give identical arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from lsmseg.prompt_cache.prompt_bank import ATTRIBUTES as PROMPT_ATTRIBUTES
from lsmseg.training.datasets.base import Sample
from lsmseg.training.datasets.synthetic_render import (
    COLOUR_RGB,
    SHAPE_MASKS,
    draw_object,
    render_stuff,
    stuff_layout,
)

COLOURS = tuple(COLOUR_RGB)
SHAPES = tuple(SHAPE_MASKS)
FILLS = ("solid", "striped", "dotted", "checkered")
SIZES = ("small", "large")
NATURAL_STUFF = ("grass", "water", "sky", "sand")
MATERIALS = ("brick", "stone", "wooden")
SURFACES = ("wall", "floor")

THING_CLASSES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
STUFF_CLASSES = [*NATURAL_STUFF, *(f"{material} {surface}" for material in MATERIALS for surface in SURFACES)]
CLASSES = THING_CLASSES + STUFF_CLASSES

_UNSEEN = {
    "red cross", "green triangle", "blue ring", "yellow square", "purple star", "orange circle", "white star",
    "black triangle", "wooden wall", "brick floor",
}
UNSEEN_CLASSES = [name for name in CLASSES if name in _UNSEEN]
SEEN_CLASSES = [name for name in CLASSES if name not in _UNSEEN]

SPLITS = {"train": 0, "test": 1}  # part of every item's seed, so the splits never share an image
_CAPTION_STREAM = 2

_RADIUS = {"small": (0.07, 0.12), "large": (0.14, 0.24)}  # fractions of the image side
_FILL_WEIGHTS = (0.4, 0.2, 0.2, 0.2)


# Attribute descriptions (size, shape, texture, colour: the paper's winning set) ---------------------------
_COLOUR_WORDS = {
    "red": "bright red", "green": "grass green", "blue": "deep blue", "yellow": "bright yellow",
    "purple": "violet purple", "orange": "vivid orange", "white": "pure white", "black": "dark black",
}
_SHAPE_WORDS = {
    "circle": "a round disc with one smooth curved edge",
    "square": "a square with four equal straight sides and four right-angled corners",
    "triangle": "a triangle with three straight sides and three sharp corners",
    "star": "a star with five pointed arms around its centre",
    "ring": "a round band with a round hole in the middle",
    "cross": "a plus-shaped cross with four equal straight arms",
}
_STUFF_WORDS = {  # name: (size, shape, texture, colour)
    "grass": ("a field covering a large part of the ground", "no fixed outline, it spreads across the ground",
              "rough and noisy with thin upright blades", "green, with yellow-green and darker patches"),
    "water": ("a wide surface covering a large part of the picture", "no fixed outline, with rolling waves",
              "smooth with repeating wavy ripples and bright highlights", "blue, from deep to light blue"),
    "sky": ("an open expanse filling the top or all of the picture", "no edges, it stretches to the horizon",
            "smooth, a soft gradient with fluffy clouds", "blue fading to pale blue, with white clouds"),
    "sand": ("flat ground covering a large part of the picture", "no fixed outline, with gentle ripples",
             "fine and grainy, with tiny dark and light speckles", "pale beige"),
}
_MATERIAL_WORDS = {  # material: (texture, colour)
    "brick": ("rough bricks separated by thin mortar lines", "reddish brown with light grey mortar"),
    "stone": ("speckled rough stone blocks with dark joints", "grey with darker grey joints"),
    "wooden": ("long planks with fine wavy wood grain", "warm brown with dark seams"),
}
_SURFACE_WORDS = {
    "wall": "blocks laid in horizontal rows with staggered joints",
    "floor": "pieces laid in long vertical runs side by side",
}


@dataclass(frozen=True)
class ClassAttributes:
    """Structured attribute words of a synthetic class, for writing description prompts."""

    name: str
    kind: Literal["thing", "stuff"]
    size: str
    shape: str
    texture: str
    colour: str


def _attributes(name: str) -> ClassAttributes:
    if name in THING_CLASSES:
        colour, shape = name.split()
        return ClassAttributes(
            name, "thing", size="a compact object, small or large, covering only part of the picture",
            shape=_SHAPE_WORDS[shape], texture="a flat painted surface, plain, striped, dotted or checkered",
            colour=_COLOUR_WORDS[colour],
        )
    if name in _STUFF_WORDS:
        return ClassAttributes(name, "stuff", *_STUFF_WORDS[name])
    material, surface = name.split()
    texture, colour = _MATERIAL_WORDS[material]
    return ClassAttributes(
        name, "stuff", size="a large flat surface covering much of the picture",
        shape=_SURFACE_WORDS[surface], texture=texture, colour=colour,
    )


ATTRIBUTES: dict[str, ClassAttributes] = {name: _attributes(name) for name in CLASSES}


def describe(name: str) -> dict[str, str]:
    """One sentence per attribute (size, shape, texture, colour) and a combined one, e.g. for "red star"."""
    if name not in ATTRIBUTES:
        raise KeyError(f"{name!r} is not a synthetic class")
    a = ATTRIBUTES[name]
    sentences = {
        "size": f"A {name} is {a.size}.",
        "shape": f"A {name} looks like {a.shape}.",
        "texture": f"The texture of a {name} is {a.texture}.",
        "colour": f"The colour of a {name} is {a.colour}.",
    }
    sentences["combined"] = f"A {name}: {a.colour}, {a.shape}, {a.texture}."
    return sentences


def attribute_prompts(name: str) -> list[str]:
    """The class's sentences in the prompt bank's order (combined, size, shape, texture, colour), ready to be
    PromptBuilder's "user" descriptions."""
    sentences = describe(name)
    return [sentences[key] for key in PROMPT_ATTRIBUTES]


def object_attribute_accuracy(confusion: ArrayLike, classes: Sequence[str]) -> dict[str, float]:
    """Where the pixels of thing classes go, from a confusion matrix (ground truth × prediction) over
    `classes`: shares predicted as the exact class, with the right colour, with the right shape, and as a
    stuff class. Chance for shape given the colour is 1 / len(SHAPES)."""
    counts = np.asarray(confusion, dtype=np.float64)
    is_thing = np.array([name in THING_CLASSES for name in classes])
    words = np.array([name.split() if name in THING_CLASSES else ["", ""] for name in classes])
    rows = counts[is_thing]  # thing ground truth × every prediction
    total = rows.sum()
    if total == 0:
        raise ValueError("the confusion matrix has no pixels of a thing class")
    same_colour = words[is_thing, None, 0] == words[None, :, 0]  # "" (stuff) never equals a colour word
    same_shape = words[is_thing, None, 1] == words[None, :, 1]
    return {
        "exact": float(np.diag(counts)[is_thing].sum() / total),
        "colour": float((rows * same_colour).sum() / total),
        "shape": float((rows * same_shape).sum() / total),
        "stuff": float(rows[:, ~is_thing].sum() / total),
    }


# Scenes ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneObject:
    class_name: str
    fill: str
    size: str
    centre: tuple[float, float]  # (y, x), fractions of the image side
    radius: float  # fraction of the image side
    angle: float  # radians

    @property
    def colour(self) -> str:
        return self.class_name.split()[0]

    @property
    def shape(self) -> str:
        return self.class_name.split()[1]

    def phrase(self) -> str:
        fill = "" if self.fill == "solid" else f"{self.fill} "
        return f"a {self.size} {fill}{self.class_name}"


@dataclass(frozen=True)
class Scene:
    """What an image shows, back to front: stuff regions (top to bottom), then objects in painting order.

    Segment id k (≥ 1) in a sample's `instances` is `segment_names[k - 1]`.
    """

    stuff: tuple[str, ...]
    objects: tuple[SceneObject, ...]

    @property
    def segment_names(self) -> list[str]:
        return [*self.stuff, *(obj.class_name for obj in self.objects)]


@dataclass(kw_only=True)
class SyntheticSample(Sample):
    scene: Scene


def _pick(rng: np.random.Generator, seen: Sequence[str], unseen: Sequence[str], fraction: float) -> str:
    pool = unseen if unseen and rng.random() < fraction else seen
    return pool[int(rng.integers(len(pool)))]


def _sample_scene(rng: np.random.Generator, split: str, unseen_fraction: float, max_objects: int) -> Scene:
    unseen = unseen_fraction if split == "test" else 0.0
    things = [[c for c in THING_CLASSES if (c in _UNSEEN) == hidden] for hidden in (False, True)]
    stuff_pools = [[c for c in STUFF_CLASSES if (c in _UNSEEN) == hidden] for hidden in (False, True)]
    stuff = [_pick(rng, *stuff_pools, unseen)]
    if rng.random() < 0.6:
        second = _pick(rng, *stuff_pools, unseen)
        if second != stuff[0]:
            stuff.append(second)
    stuff.sort(key=lambda name: name != "sky")  # sky, when present, is the upper region
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        size = SIZES[int(rng.integers(2))]
        radius = float(rng.uniform(*_RADIUS[size]))
        objects.append(SceneObject(
            class_name=_pick(rng, *things, unseen),
            fill=FILLS[int(rng.choice(len(FILLS), p=_FILL_WEIGHTS))],
            size=size,
            centre=(float(rng.uniform(0.5 * radius, 1 - 0.5 * radius)),
                    float(rng.uniform(0.5 * radius, 1 - 0.5 * radius))),
            radius=radius,
            angle=float(rng.uniform(0, 2 * np.pi)),
        ))
    objects.sort(key=lambda obj: -obj.radius)  # large first, so small objects are rarely hidden
    return Scene(tuple(stuff), tuple(objects))


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image S×S×3 uint8, segment ids S×S int32 ≥ 1) of a scene; see `Scene` for the ids."""
    regions = stuff_layout(rng, image_size, len(scene.stuff))
    textures = [render_stuff(name, rng, image_size) for name in scene.stuff]
    image = textures[0] if len(textures) == 1 else np.where(regions[..., None] == 0, *textures)
    segments = (regions + 1).astype(np.int32)
    for offset, obj in enumerate(scene.objects):
        draw_object(image, segments, len(scene.stuff) + 1 + offset, rng, shape=obj.shape, colour=obj.colour,
                    fill=obj.fill, centre=obj.centre, radius=obj.radius, angle=obj.angle)
    return np.clip(image + 0.5, 0, 255, out=image).astype(np.uint8), segments


class SyntheticScenes:
    """`num_images` procedurally rendered scenes (a SegmentationDataset); see the module docstring."""

    def __init__(
        self,
        split: Literal["train", "test"] = "train",
        num_images: int = 1000,
        image_size: int = 128,
        seed: int = 0,
        unseen_fraction: float = 0.5,
        max_objects: int = 4,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
        self.split, self.num_images, self.image_size, self.seed = split, num_images, image_size, seed
        self.unseen_fraction, self.max_objects = unseen_fraction, max_objects
        self.classes = list(SEEN_CLASSES if split == "train" else CLASSES)
        # Training and evaluation prompt with these as user descriptions (the bank has no synthetic classes).
        self.descriptions = {name: attribute_prompts(name) for name in self.classes}
        self._index = {name: index for index, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return f"SyntheticScenes({self.split!r}, {self.num_images}, {self.image_size}, seed={self.seed})"

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def scene(self, index: int) -> Scene:
        return _sample_scene(self._rng(index), self.split, self.unseen_fraction, self.max_objects)

    def __getitem__(self, index: int) -> SyntheticSample:
        index = index + self.num_images if index < 0 else index
        rng = self._rng(index)
        scene = _sample_scene(rng, self.split, self.unseen_fraction, self.max_objects)
        image, segments = render(scene, self.image_size, rng)
        lookup = np.array([self._index[name] for name in scene.segment_names], np.int32)
        return SyntheticSample(image=image, label=lookup[segments - 1], name=f"{self.split}-{index:06d}",
                               instances=segments, scene=scene)


def caption(sample: SyntheticSample, min_pixels: int = 16) -> str:
    """A sentence naming the visible objects (largest first) and the background, from the sample's own
    segment map, so it stays true after crops: "a large striped red star and a small blue ring on grass"."""
    return scene_caption(sample.scene, sample.instances, min_pixels)


def scene_caption(scene: Scene, instances: np.ndarray, min_pixels: int = 16) -> str:
    """`caption` from a scene and any (e.g. cropped) segment map of it."""
    counts = np.bincount(instances[instances > 0].ravel(), minlength=len(scene.segment_names) + 1)
    n_stuff = len(scene.stuff)
    stuff = [name for k, name in enumerate(scene.stuff, 1) if counts[k] >= min_pixels]
    visible = [(counts[n_stuff + 1 + k], k) for k in range(len(scene.objects))
               if counts[n_stuff + 1 + k] >= min_pixels]
    visible.sort(key=lambda item: (-item[0], item[1]))
    phrases = [scene.objects[k].phrase() for _, k in visible]
    background = " and ".join(stuff) or "a plain background"
    if not phrases:
        return f"a picture of {background}"
    things = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
    return f"{things} on {background}"


def instance_boundaries(instances: np.ndarray) -> np.ndarray:
    """H×W bool: pixels with a 4-neighbour in another segment (class-agnostic edge target)."""
    edges = np.zeros(instances.shape, bool)
    vertical = instances[1:] != instances[:-1]
    horizontal = instances[:, 1:] != instances[:, :-1]
    edges[1:] |= vertical
    edges[:-1] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges


@dataclass
class CaptionPair:
    image: np.ndarray  # S×S×3 uint8
    text: str  # the class name
    class_index: int  # into the dataset's `classes`
    scene: Scene  # what is drawn (for captions of crops)
    instances: np.ndarray  # S×S int32 segment ids ≥ 1, as in a sample's `instances`


class ObjectCaptions:
    """Image–text pairs for contrastive pretraining of a tiny CLIP: each image shows one class (one large
    object on a stuff background, or a stuff class filling the frame) and its text is the class name.

    Defaults to all 58 classes, like web-scale CLIP pretraining that has seen every concept at image level;
    segmentation training still never sees the unseen classes. `classes=SEEN_CLASSES` makes a stricter test.
    """

    def __init__(
        self, num_images: int = 10_000, image_size: int = 64, seed: int = 0, classes: Sequence[str] = CLASSES
    ) -> None:
        unknown = sorted(set(classes) - set(CLASSES))
        if unknown:
            raise ValueError(f"not synthetic classes: {unknown}")
        self.num_images, self.image_size, self.seed = num_images, image_size, seed
        self.classes = list(classes)
        self._backgrounds = [name for name in self.classes if name in STUFF_CLASSES] or STUFF_CLASSES

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> CaptionPair:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, _CAPTION_STREAM, index])
        class_index = int(rng.integers(len(self.classes)))
        name = self.classes[class_index]
        if name in STUFF_CLASSES:
            scene = Scene((name,), ())
        else:
            radius = float(rng.uniform(0.25, 0.4))
            centre = (float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.6)))
            background = self._backgrounds[int(rng.integers(len(self._backgrounds)))]
            fill = FILLS[int(rng.choice(len(FILLS), p=_FILL_WEIGHTS))]
            obj = SceneObject(name, fill, "large", centre, radius, float(rng.uniform(0, 2 * np.pi)))
            scene = Scene((background,), (obj,))
        image, instances = render(scene, self.image_size, rng)
        return CaptionPair(image, name, class_index, scene, instances)
