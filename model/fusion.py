"""SAM adapter + weight generator (paper eq. 6), one per guidance level, and the ablation variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SamAdapter(nn.Module):
    """Maps a SAM block output onto the CLIP grid and width: resize, LayerNorm, Linear, GELU, Linear."""

    def __init__(self, sam_dim: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(sam_dim)
        self.mlp = nn.Sequential(nn.Linear(sam_dim, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, sam_features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if sam_features.shape[-2:] != size:
            sam_features = F.interpolate(sam_features, size=size, mode="bilinear", align_corners=False)
        x = self.mlp(self.norm(sam_features.permute(0, 2, 3, 1)))
        return x.permute(0, 3, 1, 2)


class WeightGenerator(nn.Module):
    """α = sigmoid(local + global): a per-pixel map plus a per-channel vector, zero at init so α = 0.5."""

    def __init__(self, width: int) -> None:
        super().__init__()
        hidden = max(width // 4, 1)
        self.local = nn.Sequential(
            nn.Conv2d(2 * width, hidden, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )
        self.globl = nn.Sequential(nn.Linear(2 * width, hidden), nn.GELU(), nn.Linear(hidden, width))
        for last in (self.local[-1], self.globl[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, clip_features: torch.Tensor, sam_features: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([clip_features, sam_features], dim=1)
        local = self.local(joint)  # B×1×h×w
        globl = self.globl(joint.mean(dim=(2, 3)))[:, :, None, None]  # B×W×1×1
        return torch.sigmoid(local + globl)


class FusionLevel(nn.Module):
    """E_k from F_c,k and F_s,k with one of the strategies of the paper's Table 6.

    gate (mode "weight" only): E = F_c + γ·(1−α)·(F_s − F_c), γ per channel and zero at init (ReZero-style),
    so the level starts as exactly F_c: SAM joins a trained CLIP-only model without changing its outputs.
    γ = 1 is eq. 6, α·F_c + (1−α)·F_s; the gradient reaches γ at once and the rest once γ ≠ 0.
    """

    def __init__(self, mode: str, sam_dim: int, width: int, gate: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.adapter = SamAdapter(sam_dim, width)
        self.weight_generator = WeightGenerator(width) if mode == "weight" else None
        self.merge = nn.Conv2d(2 * width, width, kernel_size=1) if mode == "concat" else None
        self.gate = nn.Parameter(torch.zeros(width, 1, 1)) if gate else None

    def forward(self, clip_features: torch.Tensor, sam_features: torch.Tensor) -> torch.Tensor:
        sam_features = self.adapter(sam_features, clip_features.shape[-2:])
        if self.weight_generator is not None:
            alpha = self.weight_generator(clip_features, sam_features)
            if self.gate is not None:
                return clip_features + self.gate * ((1 - alpha) * (sam_features - clip_features))
            return alpha * clip_features + (1 - alpha) * sam_features
        if self.merge is not None:
            return self.merge(torch.cat([clip_features, sam_features], dim=1))
        return (clip_features + sam_features) / 2


class Fusion(nn.Module):
    def __init__(
        self, mode: str, sam_dim: int, widths: tuple[int, int, int], gate: bool = False
    ) -> None:
        """widths: channels of the three CLIP maps (E_3 is at embedding width when it is the dense map)."""
        super().__init__()
        self.levels = nn.ModuleList(FusionLevel(mode, sam_dim, width, gate) for width in widths)

    def forward(
        self, clip_layers: tuple[torch.Tensor, ...], sam_layers: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e1, e2, e3 = (level(c, s) for level, c, s in zip(self.levels, clip_layers, sam_layers, strict=True))
        return e1, e2, e3
