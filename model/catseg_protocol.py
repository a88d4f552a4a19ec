"""CAT-Seg's evaluation protocol, so released CAT-Seg checkpoints are scored as CAT-Seg scores them.

Per image (facts from CAT-Seg's `inference_sliding_window` and detectron2's test mapper; no code of theirs):
1. detectron2's test resize: the short side to 640 unless the long side would pass 2560, PIL bilinear.
2. Views: that image squashed to a 640×640 canvas and cut into 384² windows at stride 256 (4 windows), plus a
   global view, the resized image squashed to 384². Each view is resized to the CLIP resolution (bilinear,
   no antialias) and the 5 run as one batch, each view choosing its own classes (CFM top-k).
3. Logits upsampled (bilinear) to the window side, sigmoid; classes a view dropped count as probability 0
   there. Windows are averaged where they overlap at 640², the global view is upsampled to 640² and the two
   averaged; a bilinear resize to the original size follows (Segmenter).
Always fp32 and without edge refinement. The sizes are the same for ViT-B/16 (CLIP at 384) and ViT-L/14 (336).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lsmseg.model.cfm import Selection


@dataclass(frozen=True)
class CatSegProtocol:
    short_edge: int = 640  # detectron2 INPUT.MIN_SIZE_TEST in CAT-Seg's configs
    max_size: int = 2560  # INPUT.MAX_SIZE_TEST
    canvas: int = 640  # side of the square the windows tile (CAT-Seg's out_res)
    window: int = 384  # window and global-view side (CAT-Seg's kernel)
    stride: int = 256  # int(384 · (1 − 0.333)), CAT-Seg's overlap of 0.333

    def __post_init__(self) -> None:
        if min(self.short_edge, self.canvas, self.window, self.stride) < 1 or self.max_size < self.short_edge:
            raise ValueError(f"bad CAT-Seg protocol sizes: {self}")
        if self.window > self.canvas or (self.canvas - self.window) % self.stride:
            raise ValueError(
                f"windows of {self.window} at stride {self.stride} do not tile a {self.canvas} canvas exactly"
            )

    def offsets(self) -> range:
        """Top (and left) pixel offsets of the windows in the canvas."""
        return range(0, self.canvas - self.window + 1, self.stride)

    def window_corners(self) -> list[tuple[int, int]]:
        """(top, left) of every window, row by row: the order of torch's Unfold and of the batch."""
        return [(top, left) for top in self.offsets() for left in self.offsets()]

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """detectron2's ResizeShortestEdge size: scale the short side to `short_edge`, then shrink both
        sides if the long one exceeds `max_size`; each side rounded half up."""
        scale = self.short_edge / min(height, width)
        sides = [self.short_edge if side == min(height, width) else side * scale for side in (height, width)]
        shrink = min(1.0, self.max_size / max(sides))
        new_height, new_width = (int(side * shrink + 0.5) for side in sides)
        return new_height, new_width

    def views(self, image: np.ndarray, resolution: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The windows then the global view of an H×W×3 uint8 image: V×3×resolution² floats in [0, 1]."""
        height, width = self.resized_shape(*image.shape[:2])
        if (height, width) != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
        pixels = torch.tensor(image, device=device).permute(2, 0, 1)[None].float() / 255
        canvas = _resize(pixels, self.canvas)
        size = self.window
        windows = [canvas[..., top : top + size, left : left + size] for top, left in self.window_corners()]
        views = torch.cat([*windows, _resize(pixels, size)])
        return _resize(views, resolution)

    def combine(self, probs: torch.Tensor, selection: Selection) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-view probabilities V×K×window² (`selection` says which class each of the K is, per view) ->
        U×canvas² probabilities of the U classes some view kept, and those class indices (ascending).
        Any other class has probability 0 everywhere, so it can never be a pixel's most likely class."""
        classes = torch.unique(selection.indices[selection.mask])
        slot = torch.searchsorted(classes, selection.indices.clamp(min=0))  # V×K: row of each kept class
        size, side = self.window, self.canvas
        local = probs.new_zeros(len(classes), side, side)
        coverage = probs.new_zeros(side, side)
        for view, (top, left) in enumerate(self.window_corners()):
            kept = selection.mask[view]
            local[slot[view, kept], top : top + size, left : left + size] += probs[view, kept]
            coverage[top : top + size, left : left + size] += 1
        whole = probs.new_zeros(len(classes), size, size)
        kept = selection.mask[-1]
        whole[slot[-1, kept]] = probs[-1, kept]
        return (local / coverage + _resize(whole[None], side)[0]) / 2, classes

    def describe(self, resolution: int) -> dict[str, int | str]:
        """What the model sees of each image (Segmenter.views, evaluation reports)."""
        return {
            "protocol": "catseg",
            "short_edge": self.short_edge,
            "max_size": self.max_size,
            "resized": self.canvas,
            "window": self.window,
            "stride": self.stride,
            "windows": len(self.window_corners()),
            "global": self.window,
            "clip_input": resolution,
        }


def _resize(images: torch.Tensor, side: int) -> torch.Tensor:
    # CAT-Seg resizes with F.interpolate's defaults: bilinear, align_corners False, no antialias.
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)
