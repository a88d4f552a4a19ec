"""CAT-Seg's network computed directly from CAT-Seg-layout tensors (separate q/k/v, concatenated
[features; guidance] q/k inputs, the saved −100 Swin mask, explicit pad tokens, LoFTR-style linear attention
with values divided by the sequence length), written from the behaviour described in
docs/model.md ("CAT-Seg's network as flags") — an independent reference for the importer, not CAT-Seg's code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from catseg_layout import AGG, CLIP

State = Mapping[str, torch.Tensor]


def _norm(x: torch.Tensor, state: State, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"])


def _linear(x: torch.Tensor, state: State, prefix: str) -> torch.Tensor:
    return F.linear(x, state[prefix + "weight"], state[prefix + "bias"])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1))


def clip_dense(
    state: State, images: torch.Tensor, heads: int, taps: tuple[int, ...]
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """images normalised, B×3×S×S -> dense B×E×g×g (last block value-only + input CLS) and tapped blocks."""
    p = CLIP + "visual."
    weight = state[p + "conv1.weight"]
    x = F.conv2d(images, weight, stride=weight.shape[-1])
    batch, width, grid, _ = x.shape
    x = torch.cat([state[p + "class_embedding"].expand(batch, 1, width), x.flatten(2).transpose(1, 2)], 1)
    pos = state[p + "positional_embedding"]
    side = round((pos.shape[0] - 1) ** 0.5)
    if side != grid:  # CAT-Seg resizes the pretrained table at every forward
        patches = pos[1:].reshape(1, side, side, width).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(grid * grid, width)])
    x = _norm(x + pos, state, p + "ln_pre.")
    layers = len(
        {k for k in state if k.startswith(p + "transformer.resblocks.") and k.endswith("q_proj_weight")}
    )
    tapped = {}
    for n in range(layers):
        b = f"{p}transformer.resblocks.{n}.attn."
        bias = state[b + "in_proj_bias"].split(width)
        y = _norm(x, state, f"{p}transformer.resblocks.{n}.ln_1.")
        value = F.linear(y, state[b + "v_proj_weight"], bias[2])
        if n == layers - 1:
            x = _linear(value, state, b + "out_proj.") + x[:, :1]
        else:
            query = _heads(F.linear(y, state[b + "q_proj_weight"], bias[0]), heads).transpose(1, 2)
            key = _heads(F.linear(y, state[b + "k_proj_weight"], bias[1]), heads).transpose(1, 2)
            value = _heads(value, heads).transpose(1, 2)
            attention = (query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5).softmax(-1)
            x = x + _linear((attention @ value).transpose(1, 2).flatten(2), state, b + "out_proj.")
        mlp = f"{p}transformer.resblocks.{n}.mlp."
        hidden = _linear(_norm(x, state, f"{p}transformer.resblocks.{n}.ln_2."), state, mlp + "c_fc.")
        x = x + _linear(hidden * torch.sigmoid(1.702 * hidden), state, mlp + "c_proj.")  # QuickGELU
        if n in taps:
            tapped[n] = x[:, 1:].transpose(1, 2).reshape(batch, width, grid, grid)
    dense = _norm(x[:, 1:], state, p + "ln_post.") @ state[p + "proj"]
    return dense.transpose(1, 2).reshape(batch, -1, grid, grid), tapped


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    n, height, width, channels = x.shape
    x = x.view(n, height // window, window, width // window, window, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, -1, window * window, channels)


def _swin_layer(x: torch.Tensor, appearance: torch.Tensor, state: State, i: int, heads: int) -> torch.Tensor:
    """x: (B·T)×H×W×C; appearance: B×H×W×G (shared by a sample's T classes)."""
    swin = f"{AGG}layers.{i}.swin_block."
    guidance = _norm(appearance, state, swin + "guidance_norm.")
    guidance = guidance.repeat_interleave(x.shape[0] // appearance.shape[0], dim=0)
    mask = state[swin + "block_2.attn_mask"]
    window = round(mask.shape[1] ** 0.5)
    for j, shift in ((1, 0), (2, window // 2)):
        block = f"{swin}block_{j}."
        y, g = _norm(x, state, block + "norm1."), guidance
        if shift:
            y, g = (torch.roll(t, (-shift, -shift), dims=(1, 2)) for t in (y, g))
        y, g = _windows(y, window), _windows(g, window)  # N×nW×L×C
        joint = torch.cat([y, g], dim=-1)
        query = _heads(_linear(joint, state, block + "attn.q."), heads).transpose(-2, -3)
        key = _heads(_linear(joint, state, block + "attn.k."), heads).transpose(-2, -3)
        value = _heads(_linear(y, state, block + "attn.v."), heads).transpose(-2, -3)  # N×nW×heads×L×d
        scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5
        if shift:
            scores = scores + mask[None, :, None]
        out = _linear((scores.softmax(-1) @ value).transpose(-2, -3).flatten(-2), state, block + "attn.proj.")
        n, height, width, channels = x.shape
        out = out.view(n, height // window, width // window, window, window, channels).permute(
            0, 1, 3, 2, 4, 5
        )
        out = out.reshape(n, height, width, channels)
        if shift:
            out = torch.roll(out, (shift, shift), dims=(1, 2))
        x = x + out
        hidden = F.gelu(_linear(_norm(x, state, block + "norm2."), state, block + "mlp.fc1."))
        x = x + _linear(hidden, state, block + "mlp.fc2.")
    return x


def _class_layer(
    x: torch.Tensor, text: torch.Tensor, state: State, i: int, heads: int, pad_len: int
) -> torch.Tensor:
    """x: N×T×C pixels' class tokens; text: T×G text guidance. Returns x + (x + Δ) (pooling [1, 1])."""
    a = f"{AGG}layers.{i}.attention."
    n, classes, _ = x.shape
    tokens, guidance = x, text.expand(n, -1, -1)
    if classes < pad_len:
        pads = pad_len - classes
        tokens = torch.cat([tokens, state[a + "padding_tokens"].expand(n, pads, -1)], dim=1)
        guidance = torch.cat([guidance, state[a + "padding_guidance"].expand(n, pads, -1)], dim=1)
    y = _norm(tokens, state, a + "norm1.")
    joint = torch.cat([y, guidance], dim=-1)
    query = F.elu(_heads(_linear(joint, state, a + "attention.q."), heads)) + 1
    key = F.elu(_heads(_linear(joint, state, a + "attention.k."), heads)) + 1
    length = tokens.shape[1]
    value = _heads(_linear(y, state, a + "attention.v."), heads) / length
    summary = torch.einsum("nshd,nshv->nhdv", key, value)
    scale = 1 / (torch.einsum("nlhd,nhd->nlh", query, key.sum(dim=1)) + 1e-6)
    attended = torch.einsum("nlhd,nhdv,nlh->nlhv", query, summary, scale) * length
    refined = tokens + attended.flatten(-2)
    hidden = F.relu(_linear(_norm(refined, state, a + "norm2."), state, a + "MLP.0."))
    refined = refined + _linear(hidden, state, a + "MLP.2.")
    return x + refined[:, :classes]


def _double_conv(x: torch.Tensor, state: State, prefix: str) -> torch.Tensor:
    for conv, norm in ((0, 1), (3, 4)):
        x = F.conv2d(x, state[f"{prefix}{conv}.weight"], padding=1)
        groups = max(x.shape[1] // 16, 1)
        x = F.relu(F.group_norm(x, groups, state[f"{prefix}{norm}.weight"], state[f"{prefix}{norm}.bias"]))
    return x


def _decoder_stage(x: torch.Tensor, guidance: torch.Tensor, state: State, stage: int) -> torch.Tensor:
    """x: (B·T)×C×h×w; guidance: B×G×2h×2w."""
    d = f"{AGG}decoder{stage}."
    up = F.conv_transpose2d(x, state[d + "up.weight"], state[d + "up.bias"], stride=2)
    guidance = guidance.repeat_interleave(x.shape[0] // guidance.shape[0], dim=0)
    return _double_conv(torch.cat([up, guidance], dim=1), state, d + "conv.double_conv.")


def catseg_logits(
    state: State,
    images: torch.Tensor,
    text: torch.Tensor,
    *,
    clip_heads: int,
    heads: int,
    pad_len: int,
    shallow: int,
    deep: int,
) -> torch.Tensor:
    """images normalised B×3×S×S, text T×E (one prompt per class) -> B×T×4g×4g logits."""
    dense, tapped = clip_dense(state, images, clip_heads, (shallow, deep))
    batch, _, grid, _ = dense.shape
    classes = text.shape[0]
    cost = torch.einsum("bchw,tc->bthw", F.normalize(dense, dim=1), F.normalize(text, dim=-1))
    kernel = state[AGG + "conv1.weight"]
    x = F.conv2d(
        cost.reshape(-1, 1, grid, grid), kernel, state[AGG + "conv1.bias"], padding=kernel.shape[-1] // 2
    )
    appearance = F.relu(
        F.conv2d(
            dense,
            state[AGG + "guidance_projection.0.weight"],
            state[AGG + "guidance_projection.0.bias"],
            padding=1,
        )
    )
    text_guidance = F.relu(_linear(text, state, AGG + "text_guidance_projection.0."))
    x = x.permute(0, 2, 3, 1)  # (B·T)×H×W×C
    layers = len({k.split(".")[4] for k in state if k.startswith(AGG + "layers.")})
    for i in range(layers):
        x = _swin_layer(x, appearance.permute(0, 2, 3, 1), state, i, heads)
        per_pixel = x.reshape(batch, classes, grid * grid, -1).transpose(1, 2).flatten(0, 1)  # (B·H·W)×T×C
        per_pixel = _class_layer(per_pixel, text_guidance, state, i, heads, pad_len)
        x = (
            per_pixel.unflatten(0, (batch, grid * grid))
            .transpose(1, 2)
            .reshape(batch * classes, grid, grid, -1)
        )
    guidance_shallow = F.conv_transpose2d(
        tapped[shallow], state["upsample1.weight"], state["upsample1.bias"], stride=2
    )
    guidance_deep = F.conv_transpose2d(
        tapped[deep], state["upsample2.weight"], state["upsample2.bias"], stride=4
    )
    projections = AGG + "decoder_guidance_projection."
    guidance_shallow = F.relu(_conv3(guidance_shallow, state, projections + "0.0."))
    guidance_deep = F.relu(_conv3(guidance_deep, state, projections + "1.0."))
    y = _decoder_stage(x.permute(0, 3, 1, 2), guidance_shallow, state, 1)
    y = _decoder_stage(y, guidance_deep, state, 2)
    logits = _conv3(y, state, AGG + "head.")
    return logits.view(batch, classes, *logits.shape[-2:])


def _conv3(x: torch.Tensor, state: State, prefix: str) -> torch.Tensor:
    return F.conv2d(x, state[prefix + "weight"], state[prefix + "bias"], padding=1)
