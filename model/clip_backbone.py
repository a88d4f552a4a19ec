"""open_clip CLIP wrapper: dense features in text space, intermediate blocks, text encoding, q/v tuning."""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from lsmseg.model.config import ClipConfig
from lsmseg.model.conv_stem import ConvStem


@dataclass
class ClipFeatures:
    dense: torch.Tensor  # B×D×h×w: ln_post + proj of the last block's patch tokens (the text space)
    layers: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # B×W×h×w guidance block outputs, config order


def _zero_key_rows(grad: torch.Tensor) -> torch.Tensor:
    # open_clip packs q, k, v along dim 0 of in_proj_*; only q and v are tuned (CAT-Seg's "attention" mode).
    width = grad.shape[0] // 3
    grad = grad.clone()
    grad[width : 2 * width] = 0
    return grad


def resize_position_embedding(pos: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(1 + s²)×W table -> (1 + grid_h·grid_w)×W: patch rows bicubic (align_corners False, no antialias, as
    CAT-Seg resizes), the class token's row kept."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    side = round(patch_pos.shape[0] ** 0.5)
    if (grid_h, grid_w) == (side, side):
        return pos
    patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)])


def value_only_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CAT-Seg's dense form of an open_clip ResidualAttentionBlock (B×L×W, batch first): no attention, the
    value projection alone, with the input's class token in place of each token's own residual."""
    width = x.shape[-1]
    attn = block.attn
    value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
    x = x[:, :1] + block.ls_1(attn.out_proj(value))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def build_open_clip(config: ClipConfig, image_size: int) -> open_clip.model.CLIP:
    """open_clip's CLIP for `config` (random weights), with the convolutional stem where it asks for one."""
    model = open_clip.model.CLIP(
        embed_dim=config.embed_dim,
        vision_cfg={**config.vision, "image_size": image_size},
        text_cfg=config.text,
        quick_gelu=config.quick_gelu,
    )
    if config.conv_stem:
        model.visual.conv1 = ConvStem(config.conv_stem, config.width)
    return model


class ClipBackbone(nn.Module):
    def __init__(self, config: ClipConfig, image_size: int) -> None:
        super().__init__()
        self.config = config
        self.model = build_open_clip(config, image_size)
        self.tokenizer = open_clip.get_tokenizer(
            config.tokenizer, context_length=config.text["context_length"]
        )
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self._tune_only_query_value()

    def _tune_only_query_value(self) -> None:
        for param in self.model.parameters():
            param.requires_grad_(False)
        for param in self.query_value_parameters():
            param.requires_grad_(True)
            param.register_hook(_zero_key_rows)

    def query_value_parameters(self) -> list[nn.Parameter]:
        """The packed in_proj weight and bias of every attention layer of both towers (k rows stay fixed)."""
        return [
            param
            for module in self.model.modules()
            if isinstance(module, nn.MultiheadAttention)
            for param in (module.in_proj_weight, module.in_proj_bias)
        ]

    def _position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        return resize_position_embedding(self.model.visual.positional_embedding, grid_h, grid_w)

    def forward(self, images: torch.Tensor) -> ClipFeatures:
        """images: B×3×H×W in [0, 1]; any H, W that are multiples of the patch size."""
        visual = self.model.visual
        x = visual.conv1((images - self.mean) / self.std)
        batch, width, grid_h, grid_w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.to(x.dtype).expand(batch, 1, width), x], dim=1)
        x = visual.ln_pre(x + self._position_embedding(grid_h, grid_w).to(x.dtype))
        blocks = visual.transformer.resblocks
        value_only_last = self.config.dense_mode == "catseg"
        taps = {}
        for index, block in enumerate(blocks):
            # In "catseg" mode the last block's tap (if tapped) is its value-only output, as the dense one.
            x = value_only_block(block, x) if value_only_last and index == len(blocks) - 1 else block(x)
            if index in self.config.guidance_layers:
                taps[index] = x[:, 1:].transpose(1, 2).reshape(batch, width, grid_h, grid_w)
        dense = visual.ln_post(x[:, 1:]) @ visual.proj
        dense = dense.transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        first, second, third = (taps[index] for index in self.config.guidance_layers)
        return ClipFeatures(dense=dense, layers=(first, second, third))

    def encode_text(self, prompts: list[list[str]], chunk_size: int = 256) -> torch.Tensor:
        """C lists of P prompts -> C×P×D, L2-normalised. Prompts longer than the context are truncated."""
        if not prompts:
            raise ValueError("encode_text needs at least one class")
        per_class = len(prompts[0])
        if per_class == 0 or any(len(group) != per_class for group in prompts):
            raise ValueError("every class needs the same, non-zero number of prompts")
        tokens = self.tokenizer([prompt for group in prompts for prompt in group]).to(self.mean.device)
        features = torch.cat([self.model.encode_text(chunk) for chunk in tokens.split(chunk_size)])
        return F.normalize(features, dim=-1).view(len(prompts), per_class, -1)

    def text_state(self) -> dict[str, torch.Tensor]:
        """The text tower's tensors: what decides the text embeddings."""
        return {
            name: tensor
            for name, tensor in self.model.state_dict().items()
            if not name.startswith("visual.") and not name.startswith("logit_")
        }
