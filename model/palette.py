"""Class colours for label maps: one fixed sequence, so the API's PNGs, the page and the figures agree."""

from __future__ import annotations

import numpy as np

_GOLDEN_RATIO = 0.618033988749895


def palette(num_colours: int) -> np.ndarray:
    """num_colours × 3 uint8 RGB: a fixed sequence of well-separated colours (golden-ratio hue steps)."""
    index = np.arange(num_colours)
    hue = (index * _GOLDEN_RATIO) % 1.0
    saturation = np.where(index % 2 == 0, 0.75, 0.55)
    value = np.where((index // 2) % 2 == 0, 0.95, 0.75)
    # HSV -> RGB, vectorised.
    sector = np.floor(hue * 6).astype(int) % 6
    fraction = hue * 6 - np.floor(hue * 6)
    p = value * (1 - saturation)
    q = value * (1 - fraction * saturation)
    t = value * (1 - (1 - fraction) * saturation)
    choices = [
        (value, t, p),
        (q, value, p),
        (p, value, t),
        (p, q, value),
        (t, p, value),
        (value, p, q),
    ]
    rgb = np.zeros((num_colours, 3))
    for which, (red, green, blue) in enumerate(choices):
        chosen = sector == which
        rgb[chosen] = np.stack([red[chosen], green[chosen], blue[chosen]], axis=1)
    return (rgb * 255).round().astype(np.uint8)
