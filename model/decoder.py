"""Guided upsampling decoder (paper eq. 9): two ×2 stages guided by E_2 and E_1, one logit per class."""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(in_dim: int, out_dim: int) -> nn.Sequential:
    groups = max(out_dim // 16, 1)
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(groups, out_dim),
        nn.ReLU(),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(groups, out_dim),
        nn.ReLU(),
    )


class _GuidedUp(nn.Module):
    """×2 transposed conv of each class map, concatenated with the image's guidance, then a double conv."""

    def __init__(self, in_dim: int, guidance_dim: int, out_dim: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_dim, in_dim - guidance_dim, kernel_size=2, stride=2)
        self.conv = _double_conv(in_dim, out_dim)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: B×K×C×h×w; guidance: B×G×2h×2w (shared by the K classes of a sample)."""
        batch, classes = x.shape[:2]
        up = self.up(x.flatten(0, 1)).unflatten(0, (batch, classes))
        joint = torch.cat([up, guidance[:, None].expand(-1, classes, -1, -1, -1)], dim=2)
        return self.conv(joint.flatten(0, 1)).unflatten(0, (batch, classes))


class GuidedDecoder(nn.Module):
    def __init__(
        self,
        hidden_dim: int,
        width: int,
        decoder_dims: tuple[int, int],
        guidance_dims: tuple[int, int],
        guidance_proj_dims: tuple[int, int],
    ) -> None:
        super().__init__()
        # E_2 -> 2h×2w and E_1 -> 4h×4w, as CAT-Seg turns its intermediate CLIP layers into decoder guidance.
        self.guidance_2 = nn.Sequential(
            nn.ConvTranspose2d(width, guidance_dims[0], kernel_size=2, stride=2),
            nn.Conv2d(guidance_dims[0], guidance_proj_dims[0], kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.guidance_1 = nn.Sequential(
            nn.ConvTranspose2d(width, guidance_dims[1], kernel_size=4, stride=4),
            nn.Conv2d(guidance_dims[1], guidance_proj_dims[1], kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.up_1 = _GuidedUp(hidden_dim, guidance_proj_dims[0], decoder_dims[0])
        self.up_2 = _GuidedUp(decoder_dims[0], guidance_proj_dims[1], decoder_dims[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, padding=1)

    def forward(
        self, x: torch.Tensor, e2: torch.Tensor, e1: torch.Tensor, class_chunk: int | None = None
    ) -> torch.Tensor:
        """x: B×K×C×h×w -> B×K×4h×4w logits. Classes are independent: chunking bounds memory for large K."""
        guidance_2, guidance_1 = self.guidance_2(e2), self.guidance_1(e1)
        outputs = []
        for part in x.split(class_chunk, dim=1) if class_chunk else (x,):
            y = self.up_2(self.up_1(part, guidance_2), guidance_1)
            outputs.append(self.head(y.flatten(0, 1)).view(y.shape[0], y.shape[1], *y.shape[-2:]))
        return torch.cat(outputs, dim=1)
