"""A convolutional patch embedding for small CLIPs trained from scratch ("early convolutions", Xiao 2021).

It replaces open_clip's `visual.conv1` (one patch_size × patch_size convolution) and keeps its contract:
B×3×H×W in, B×width×(H/patch)×(W/patch) out. The `demo` CLIP needs it: trained for minutes on a CPU, a plain
ViT learns colour but not object shape, while this stem learns shape several times faster
(docs/experiments/2026-11-25-clip-shape.md). GroupNorm, not BatchNorm, so the stem has no running statistics
for training mode to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _conv(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        nn.GroupNorm(1, out_channels),
        nn.GELU(),
    ]


class ConvStem(nn.Sequential):
    """One stage per entry of `channels`: a stride-2 and a stride-1 3×3 convolution (GroupNorm, GELU each),
    then a 1×1 projection to the transformer width. The stride is 2 ** len(channels)."""

    def __init__(self, channels: Sequence[int], width: int) -> None:
        if not channels:
            raise ValueError("a convolutional stem needs at least one stage")
        layers: list[nn.Module] = []
        previous = 3
        for out_channels in channels:
            layers += _conv(previous, out_channels, stride=2) + _conv(out_channels, out_channels, stride=1)
            previous = out_channels
        layers.append(nn.Conv2d(previous, width, kernel_size=1))
        super().__init__(*layers)
        self.stride = 2 ** len(channels)
