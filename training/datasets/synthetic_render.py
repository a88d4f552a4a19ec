"""Drawing for the synthetic scenes: stuff textures over the frame, then shapes with fill patterns on top.

Everything is vectorised numpy on float32 images (0..255). Masks are exact (no anti-aliasing): a pixel belongs
to a shape when its centre does, and the same mask writes both the colour and the segment id.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import numpy as np
from PIL import Image

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 40),
    "purple": (140, 50, 175),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}

# Built surfaces: material decides colours and grain, surface decides the layout (walls are laid in
# horizontal courses, floors in vertical runs), so "wooden wall" is drawable from words seen elsewhere.
class _Material(NamedTuple):
    fill: tuple[int, int, int]
    joint: tuple[int, int, int]
    length: float  # block size along its row, as a fraction of the image side
    height: float  # row height, likewise
    joint_width: float  # fraction of the row height


_MATERIALS = {
    "brick": _Material(fill=(165, 72, 50), joint=(195, 190, 180), length=0.22, height=0.09, joint_width=0.14),
    "stone": _Material(fill=(135, 135, 128), joint=(70, 70, 68), length=0.32, height=0.17, joint_width=0.08),
    "wooden": _Material(fill=(150, 95, 50), joint=(70, 40, 20), length=0.9, height=0.12, joint_width=0.07),
}

Array = np.ndarray


@cache
def _grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates y, x in [0, 1), S×S each (read-only, shared)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _noise(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Smooth value noise in [0, 1]: a (cells+1)² random grid upsampled bilinearly to S×S."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR))


def _mix(a: Array | tuple, b: Array | tuple, t: Array) -> Array:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def _grass(rng: np.random.Generator, size: int) -> Array:
    _, x = _grid(size)
    blades = np.sin(x * size * rng.uniform(0.9, 1.4) + 6 * _noise(rng, size, 6))  # thin vertical streaks
    grain = rng.random((size, size), dtype=np.float32)
    shade = 0.7 + 0.3 * _noise(rng, size, 12) + 0.08 * blades + 0.12 * grain
    return _mix((60, 140, 40), (140, 165, 60), 0.5 * _noise(rng, size, 4)) * shade[..., None]


def _water(rng: np.random.Generator, size: int) -> Array:
    y, x = _grid(size)
    warp = 0.04 * np.sin(2 * np.pi * x * rng.uniform(1, 3) + rng.uniform(0, 2 * np.pi))
    waves = np.sin(2 * np.pi * rng.uniform(5, 9) * (y + warp) + 3 * _noise(rng, size, 4))
    colour = _mix((25, 75, 150), (60, 130, 200), 0.5 + 0.5 * waves)
    return _mix(colour, (210, 235, 255), np.clip((waves - 0.85) / 0.15, 0, 1))


def _sky(rng: np.random.Generator, size: int) -> Array:
    y, _ = _grid(size)
    colour = _mix((55, 115, 215), (165, 205, 245), y)
    clouds = 0.6 * _noise(rng, size, 3) + 0.4 * _noise(rng, size, 7)
    return _mix(colour, (245, 245, 250), 0.9 * np.clip((clouds - rng.uniform(0.5, 0.65)) / 0.15, 0, 1))


def _sand(rng: np.random.Generator, size: int) -> Array:
    y, _ = _grid(size)
    ripples = np.sin(2 * np.pi * 12 * y + 4 * _noise(rng, size, 5))
    shade = 0.9 + 0.08 * _noise(rng, size, 10) + 0.04 * ripples
    speckle = rng.random((size, size), dtype=np.float32)
    shade = np.where(speckle < 0.08, shade * 0.75, np.where(speckle > 0.96, shade * 1.1, shade))
    return np.float32((215, 190, 140)) * shade[..., None]


def _built(rng: np.random.Generator, size: int, material: str, surface: str) -> Array:
    spec = _MATERIALS[material]
    y, x = _grid(size)
    along, across = (x, y) if surface == "wall" else (y, x)
    scale = rng.uniform(0.85, 1.15)
    length, height = spec.length * scale, spec.height * scale
    across = across + rng.uniform(0, height)
    row = (across / height).astype(np.int32)  # floor: all coordinates are positive
    rows = int(row.max()) + 1
    # Bricks alternate half-length offsets; stone and wood rows are offset at random.
    offsets = (np.arange(rows) % 2) * length / 2 if material == "brick" else rng.uniform(0, length, rows)
    along = along + offsets.astype(np.float32)[row]
    col = (along / length).astype(np.int32)
    fa, fb = along / length - col, across / height - row
    joint = (fb < spec.joint_width) | (fa < spec.joint_width * height / length)  # equally thick both ways
    cols = int(col.max()) + 1
    shade = rng.uniform(0.82, 1.15, rows * cols).astype(np.float32)[row * cols + col]  # one tone per block
    if material == "stone":
        shade = shade * (0.85 + 0.3 * rng.random((size, size), dtype=np.float32))
    elif material == "wooden":
        shade = shade * (0.9 + 0.1 * np.sin(2 * np.pi * (6 * fb + 0.8 * _noise(rng, size, 5))))
    colour = np.float32(spec.fill) * shade[..., None]
    colour[joint] = spec.joint
    return colour


_NATURAL = {"grass": _grass, "water": _water, "sky": _sky, "sand": _sand}


def render_stuff(name: str, rng: np.random.Generator, size: int) -> Array:
    """S×S×3 float32 texture of a stuff class: a natural one or '<material> <surface>'."""
    if name in _NATURAL:
        return _NATURAL[name](rng, size)
    material, surface = name.split()
    return _built(rng, size, material, surface)


def stuff_layout(rng: np.random.Generator, size: int, regions: int) -> Array:
    """S×S int region index: one region, or two split by a wavy horizon (0 above, 1 below)."""
    if regions == 1:
        return np.zeros((size, size), np.int64)
    y, x = _grid(size)
    horizon = rng.uniform(0.3, 0.7) + rng.uniform(0, 0.06) * np.sin(
        2 * np.pi * rng.uniform(0.5, 2) * x + rng.uniform(0, 2 * np.pi)
    )
    return (y >= horizon).astype(np.int64)


# Shapes ---------------------------------------------------------------------------------------------------
_STAR_OUTER = np.array([1.0, 0.0])
_STAR_INNER = 0.45 * np.array([np.cos(np.pi / 5), np.sin(np.pi / 5)])


def _star(u: Array, v: Array) -> Array:
    # Fold the angle into one half-arm (0 at a tip, 36° at an inner corner); there the star is the triangle
    # origin–tip–inner corner, i.e. the side of the tip→inner-corner edge that holds the origin.
    r = np.hypot(u, v)
    phi = np.abs(np.mod(np.arctan2(u, -v) + np.pi / 5, 2 * np.pi / 5) - np.pi / 5)  # a tip points up
    px, py = r * np.cos(phi), r * np.sin(phi)
    ex, ey = _STAR_INNER - _STAR_OUTER
    return ex * (py - _STAR_OUTER[1]) - ey * (px - _STAR_OUTER[0]) >= 0


def _triangle(u: Array, v: Array) -> Array:
    # Equilateral, circumradius 1: inside all three edges, each at distance 1/2 from the centre.
    inside = np.ones(u.shape, bool)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
    return inside


SHAPE_MASKS = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "ring": lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.55**2),
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": _triangle,
    "star": _star,
    "cross": lambda u, v: ((np.abs(u) <= 1) & (np.abs(v) <= 0.33)) | ((np.abs(v) <= 1) & (np.abs(u) <= 0.33)),
}


def _fill_pattern(fill: str, u: Array, v: Array, radius: float) -> Array:
    """True where the fill uses the second tone (u, v in pixels, in the object's rotated frame)."""
    if fill == "striped":
        return np.floor(u / max(2.0, radius / 4)) % 2 == 1
    if fill == "dotted":
        spacing = max(4.0, radius / 2.2)
        du, dv = np.mod(u, spacing) - spacing / 2, np.mod(v, spacing) - spacing / 2
        return du * du + dv * dv < (0.3 * spacing) ** 2
    if fill == "checkered":
        cell = max(3.0, radius / 2.5)
        return (np.floor(u / cell) + np.floor(v / cell)) % 2 == 1
    return np.zeros(u.shape, bool)


def second_tone(rgb: Array) -> Array:
    """The pattern tone of a colour: darker, or lighter for dark colours, so the colour stays recognisable."""
    return rgb + (255 - rgb) * 0.4 if rgb.max() < 80 else rgb * 0.55


def draw_object(
    image: Array,
    segments: Array,
    segment_id: int,
    rng: np.random.Generator,
    *,
    shape: str,
    colour: str,
    fill: str,
    centre: tuple[float, float],
    radius: float,
    angle: float,
) -> None:
    """Paint one object over `image` (S×S×3 float) and write `segment_id` into `segments` under its mask.

    centre (y, x) and radius are fractions of the image side.
    """
    size = image.shape[0]
    cy, cx, r = centre[0] * size, centre[1] * size, radius * size
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
    if y0 >= y1 or x0 >= x1:
        return
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    mask = SHAPE_MASKS[shape](u / r, v / r)
    primary = np.clip(np.float32(COLOUR_RGB[colour]) + rng.uniform(-12, 12, 3).astype(np.float32), 0, 255)
    rgb = np.where(_fill_pattern(fill, u, v, r)[..., None], second_tone(primary), primary)
    light = 1 + 0.08 * (u / r)[..., None]  # soft light from one side, turning with the object
    noise = rng.normal(0, 4, rgb.shape).astype(np.float32)
    image[y0:y1, x0:x1][mask] = (rgb * light + noise)[mask]
    segments[y0:y1, x0:x1][mask] = segment_id
