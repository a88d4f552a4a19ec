"""Frozen segment-anything ImageEncoderViT: outputs of its last three global-attention blocks."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from lsmseg.model.config import SAM_PIXEL_MEAN, SAM_PIXEL_STD, SamConfig


class SamBackbone(nn.Module):
    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ImageEncoderViT(
            img_size=config.built_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
        )
        # Only block outputs are used: the neck (and any block after the last global one) never runs.
        last = config.feature_layers[-1]
        del self.encoder.neck
        self.encoder.blocks = self.encoder.blocks[: last + 1]
        self.register_buffer("mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> SamBackbone:
        # SAM stays frozen: never switch it to training behaviour.
        super().train(mode)
        self.encoder.eval()
        return self

    def _position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.encoder.pos_embed  # 1×G×G×C, channels last
        if pos.shape[1:3] == (grid_h, grid_w):
            return pos
        pos = F.interpolate(
            pos.permute(0, 3, 1, 2), size=(grid_h, grid_w), mode="bicubic", align_corners=False
        )
        return pos.permute(0, 2, 3, 1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: B×3×H×W in [0, 1] -> three B×C×g×g maps (g = input_size / patch), NCHW."""
        size = self.config.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        x = self.encoder.patch_embed((images - self.mean) / self.std)
        x = x + self._position_embedding(x.shape[1], x.shape[2]).to(x.dtype)
        outputs = []
        for index, block in enumerate(self.encoder.blocks):
            x = block(x)
            if index in self.config.feature_layers:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs[0], outputs[1], outputs[2]
