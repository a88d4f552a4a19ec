"""Edge-aware refinement of class probabilities: an à-trous joint bilateral filter guided by the image.

The decoder draws class boundaries at its own resolution (a quarter of a patch), so pixels next to an edge
often take the neighbouring segment's class. Each pass replaces every pixel's class probabilities by a
weighted mean over a 5×5 grid of taps spaced `dilation` pixels apart, each tap weighted by how close its
colour is to the pixel's: probabilities flow within regions of one colour and not across the image's edges.
Dilations 1, 2, 4 reach 14 px in three cheap passes (an edge-avoiding à-trous scheme, as in Dammertz et al.
2010), so a region also votes out scattered wrong pixels. No weights are learnt, so it applies to any model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class EdgeRefinement:
    # Chosen with the demo checkpoint on 200 fresh synthetic scenes (seed 1, not the test split):
    # docs/experiments/2026-12-02-edge-refinement.md.
    radius: int = 2  # taps per side of each pass's grid
    dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4)  # tap spacing of each pass, in pixels
    sigma_colour: float = 0.06  # RGB distance (0–1 per channel) at which a tap's weight falls to e^-1/2
    # Large photos are refined at most this many pixels a side, then upsampled: cost and memory grow with the
    # pixels (at 512 px, 0.53 s on 2 CPU cores for k = 16, 7x the demo model; benchmarks/edge_refinement.py).
    max_side: int = 256

    def __post_init__(self) -> None:
        if self.radius < 1 or not self.dilations or min(self.dilations) < 1:
            raise ValueError("edge refinement needs radius ≥ 1 and at least one dilation, each ≥ 1")
        if self.sigma_colour <= 0 or self.max_side < 1:
            raise ValueError("edge refinement needs sigma_colour > 0 and max_side ≥ 1")

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The size refinement runs at for an image of height × width (aspect ratio kept)."""
        scale = min(1.0, self.max_side / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(
        self, probs: torch.Tensor, image: torch.Tensor, between_passes: Callable[[], object] | None = None
    ) -> torch.Tensor:
        """probs: K×H×W class scores; image: 3×H×W float RGB in [0, 1], same H×W. Returns K×H×W, each pixel
        a convex combination of its taps' scores (so per-pixel sums and the value range are kept).
        `between_passes()`, when given, is called after each pass but the last: a chance to run other work."""
        if probs.shape[-2:] != image.shape[-2:] or image.shape[0] != 3:
            raise ValueError(f"probs {tuple(probs.shape)} and image {tuple(image.shape)} do not match")
        image = image.to(probs.dtype)
        height, width = probs.shape[-2:]
        scale = -0.5 / self.sigma_colour**2
        for number, dilation in enumerate(self.dilations):
            if number and between_passes is not None:
                between_passes()
            # Padded once per pass (borders repeated); each tap is then a view into the padded maps.
            pad = self.radius * dilation
            padded_probs = F.pad(probs[None], (pad,) * 4, mode="replicate")[0]
            padded_image = F.pad(image[None], (pad,) * 4, mode="replicate")[0]
            total = torch.zeros_like(probs)
            weight_sum = torch.zeros_like(probs[:1])
            for top in range(0, 2 * pad + 1, dilation):
                for left in range(0, 2 * pad + 1, dilation):
                    tap_image = padded_image[:, top : top + height, left : left + width]
                    distance = (tap_image - image).square().sum(dim=0, keepdim=True)
                    # Clamped so that far colours weigh e^-80, not a subnormal float (slow on CPUs).
                    weight = torch.exp((scale * distance).clamp(min=-80.0))
                    total.addcmul_(weight, padded_probs[:, top : top + height, left : left + width])
                    weight_sum += weight
            probs = total / weight_sum  # the centre tap has weight 1, so the sum is ≥ 1
        return probs


DEFAULT_EDGE_REFINEMENT = EdgeRefinement()  # frozen, so one instance serves every Segmenter
