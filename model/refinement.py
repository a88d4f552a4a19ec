"""Feature refinement (paper eq. 7–8): Swin spatial blocks guided by fused visual features, then linear
attention across classes guided by the text embeddings.

Cost embeddings are laid out B×K×h×w×C (K classes per sample). Guidance enters only the query and key
projections; it is projected once per image and broadcast over classes rather than copied K times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(dim: int, activation: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 4 * dim), activation(), nn.Linear(4 * dim, dim))


def _to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """…×H×W×C -> …×nW×(window²)×C (H and W multiples of window)."""
    *lead, height, width, channels = x.shape
    x = x.reshape(*lead, height // window, window, width // window, window, channels)
    x = x.transpose(-4, -3)
    return x.reshape(*lead, (height // window) * (width // window), window * window, channels)


def _from_windows(x: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    *lead, _, _, channels = x.shape
    x = x.reshape(*lead, height // window, width // window, window, window, channels)
    x = x.transpose(-4, -3)
    return x.reshape(*lead, height, width, channels)


def shift_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """nW×1×L×L boolean mask: after the cyclic shift, tokens attend only to tokens of their own region."""
    regions = torch.zeros(height, width, device=device)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[rows, cols] = label
            label += 1
    windows = _to_windows(regions[..., None], window)[..., 0]  # nW×L
    return windows[:, None, :, None] == windows[:, None, None, :]


class SpatialBlock(nn.Module):
    """One Swin block over each class's cost map, windowed (shift 0) or shifted (shift = window / 2)."""

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.num_heads, self.window, self.shift = num_heads, window, shift
        self.norm = nn.LayerNorm(dim)
        self.guidance_norm = nn.LayerNorm(guidance_dim)
        # q and k see [cost; guidance]: Linear over the concatenation, split so guidance is projected once.
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.query_guidance = nn.Linear(guidance_dim, dim, bias=False)
        self.key_guidance = nn.Linear(guidance_dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, nn.GELU)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-3, -2)  # …×nW×heads×L×d

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: B×K×h×w×C; guidance: B×1×h×w×G."""
        height, width = x.shape[2:4]
        window = min(self.window, height, width)
        shift = self.shift if window < min(height, width) else 0
        pad_h, pad_w = (-height) % window, (-width) % window
        y = F.pad(self.norm(x), (0, 0, 0, pad_w, 0, pad_h))
        g = F.pad(self.guidance_norm(guidance), (0, 0, 0, pad_w, 0, pad_h))
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(2, 3))
            g = torch.roll(g, (-shift, -shift), dims=(2, 3))
        y, g = _to_windows(y, window), _to_windows(g, window)
        query = self._heads(self.query(y) + self.query_guidance(g))
        key = self._heads(self.key(y) + self.key_guidance(g))
        value = self._heads(self.value(y))  # B×K×nW×heads×L×d
        lead = value.shape[:-2]
        # Attention as 4-D (B·K)×(nW·heads)×L×d: the layout every SDPA kernel and the ONNX exporter take.
        query, key, value = (z.flatten(0, 1).flatten(1, 2) for z in (query, key, value))
        mask = None
        if shift:
            mask = shift_window_mask(height + pad_h, width + pad_w, window, shift, x.device)
            mask = mask.expand(-1, self.num_heads, -1, -1).flatten(0, 1)[None]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask).view(
            *lead, -1, query.shape[-1]
        )
        attended = self.out(attended.transpose(-3, -2).flatten(-2))
        attended = _from_windows(attended, window, height + pad_h, width + pad_w)
        if shift:
            attended = torch.roll(attended, (shift, shift), dims=(2, 3))
        x = x + attended[:, :, :height, :width]
        return x + self.mlp(self.mlp_norm(x))


class SpatialRefinement(nn.Module):
    def __init__(self, dim: int, guidance_dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SpatialBlock(dim, guidance_dim, num_heads, window, shift) for shift in (0, window // 2)
        )

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, guidance)
        return x


class ClassRefinement(nn.Module):
    """Linear attention (elu + 1 feature map) across the K classes at every pixel; no class order is used.

    pad_len > 0 (CAT-Seg): a sample with fewer than pad_len classes attends as if identical learnable pad
    tokens (padding_token, with padding_guidance as its text guidance) filled it up to pad_len. Identical pads
    add n_pad·φ(k_p)v_pᵀ to the key-value summary and n_pad·φ(k_p) to the key sum: no cost per pad.
    residual "catseg": the output is x + up(pool(x) + Δ) instead of x + Δ, pooling pool×pool pixels.
    """

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        num_heads: int,
        eps: float = 1e-6,
        pad_len: int = 0,
        residual: str = "single",
        pool: int = 1,
        out_proj: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads, self.eps = num_heads, eps
        self.pad_len, self.residual, self.pool = pad_len, residual, pool
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.query_guidance = nn.Linear(guidance_dim, dim, bias=False)
        self.key_guidance = nn.Linear(guidance_dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, nn.ReLU)
        if pad_len:
            self.padding_token = nn.Parameter(torch.zeros(dim))
            self.padding_guidance = nn.Parameter(torch.zeros(guidance_dim))

    def _pad_key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """φ(k_p) and v_p of the pad token, heads×d each."""
        pad = self.norm(self.padding_token)
        key = F.elu(self.key(pad) + self.key_guidance(self.padding_guidance)) + 1
        return key.unflatten(-1, (self.num_heads, -1)), self.value(pad).unflatten(-1, (self.num_heads, -1))

    def _refine(self, x: torch.Tensor, text_guidance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: B×K×h×w×C -> x + Δ."""
        tokens = x.permute(0, 2, 3, 1, 4)  # B×h×w×K×C: classes are the sequence
        t = text_guidance[:, None, None]
        y = self.norm(tokens)
        query = F.elu(self.query(y) + self.query_guidance(t)) + 1
        key = F.elu(self.key(y) + self.key_guidance(t)) + 1
        value = self.value(y)
        keep = mask[:, None, None, :, None].to(key.dtype)
        key, value = key * keep, value * keep
        query, key, value = (z.unflatten(-1, (self.num_heads, -1)) for z in (query, key, value))
        summary = torch.einsum("bijkhd,bijkhe->bijhde", key, value)
        key_sum = key.sum(dim=3)
        if self.pad_len:
            pads = (self.pad_len - mask.sum(dim=1)).clamp(min=0).to(key.dtype)  # B: 0 once K ≥ pad_len
            pads = pads.view(-1, 1, 1, 1, 1)
            pad_key, pad_value = self._pad_key_value()
            summary = summary + pads[..., None] * (pad_key[:, :, None] * pad_value[:, None, :])
            key_sum = key_sum + pads * pad_key
        normaliser = torch.einsum("bijkhd,bijhd->bijkh", query, key_sum) + self.eps
        attended = torch.einsum("bijkhd,bijhde->bijkhe", query, summary) / normaliser[..., None]
        tokens = tokens + self.out(attended.flatten(-2))
        tokens = tokens + self.mlp(self.mlp_norm(tokens))
        return tokens.permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor, text_guidance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: B×K×h×w×C; text_guidance: B×K×G; mask: B×K (False = padding, ignored as a key)."""
        if self.residual == "single":
            return self._refine(x, text_guidance, mask)
        if self.pool == 1:
            return x + self._refine(x, text_guidance, mask)
        lead, size = x.shape[:2], x.shape[2:4]
        pooled = F.avg_pool2d(_channels_first(x), self.pool)
        refined = self._refine(_channels_last(pooled, lead), text_guidance, mask)
        up = F.interpolate(_channels_first(refined), size=size, mode="bilinear", align_corners=True)
        return x + _channels_last(up, lead)


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """B×K×h×w×C -> (B·K)×C×h×w, for the image ops."""
    return x.flatten(0, 1).permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).unflatten(0, lead)


class RefinementLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        num_heads: int,
        window: int,
        spatial: bool = True,
        classes: bool = True,
        class_pad_len: int = 0,
        class_residual: str = "single",
        class_pool: int = 1,
        class_out_proj: bool = True,
    ) -> None:
        super().__init__()
        self.spatial = SpatialRefinement(dim, guidance_dim, num_heads, window) if spatial else None
        self.classes = (
            ClassRefinement(
                dim,
                guidance_dim,
                num_heads,
                pad_len=class_pad_len,
                residual=class_residual,
                pool=class_pool,
                out_proj=class_out_proj,
            )
            if classes
            else None
        )

    def forward(
        self,
        x: torch.Tensor,
        appearance: torch.Tensor,
        text_guidance: torch.Tensor,
        mask: torch.Tensor,
        class_chunk: int | None = None,
    ) -> torch.Tensor:
        if self.spatial is not None:
            # Classes are independent here, so very large K may be processed in chunks to bound memory.
            parts = x.split(class_chunk, dim=1) if class_chunk else (x,)
            x = torch.cat([self.spatial(part, appearance) for part in parts], dim=1)
        if self.classes is not None:
            x = self.classes(x, text_guidance, mask)
        return x
