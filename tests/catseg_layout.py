"""CAT-Seg-layout state dicts for the importer's tests, written from the key layout of CAT-Seg's CVPR'24
checkpoints (docs/model.md, "Importing CAT-Seg checkpoints"), not from CAT-Seg's code.

`catseg_shapes` lists every tensor of a released checkpoint at any size; `catseg_state` fills it with seeded
random values (the Swin mask with the real −100 pattern) so a tiny file exercises every key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

CLIP = "sem_seg_head.predictor.clip_model."
AGG = "sem_seg_head.predictor.transformer."


@dataclass(frozen=True)
class Layout:
    width: int = 64  # W, CLIP vision width
    layers: int = 4  # vision blocks
    patch: int = 8
    pretrained_grid: int = 4  # side of the stored position table (14 for B/16, 24 for L/14@336)
    embed: int = 32  # E
    text_width: int = 64
    text_layers: int = 2
    context: int = 77
    vocab: int = 49408
    hidden: int = 32
    guidance: int = 32
    prompts: int = 1
    kernel: int = 3
    num_layers: int = 2
    window: int = 4
    grid: int = 8  # feature grid the Swin mask is built for
    decoder: tuple[int, int] = (16, 8)
    decoder_guidance: tuple[int, int] = (32, 16)
    decoder_guidance_proj: tuple[int, int] = (8, 4)


# The released models' sizes (vitb_384.yaml / vitl_336.yaml).
VIT_B16 = Layout(
    width=768,
    layers=12,
    patch=16,
    pretrained_grid=14,
    embed=512,
    text_width=512,
    text_layers=12,
    hidden=128,
    guidance=128,
    kernel=7,
    window=12,
    grid=24,
    decoder=(64, 32),
    decoder_guidance=(256, 128),
    decoder_guidance_proj=(32, 16),
)
VIT_L14_336 = replace(
    VIT_B16, width=1024, layers=24, patch=14, pretrained_grid=24, embed=768, text_width=768, text_layers=12
)


def _residual_blocks(prefix: str, width: int, layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for n in range(layers):
        block = f"{prefix}transformer.resblocks.{n}."
        shapes.update({f"{block}attn.{name}_proj_weight": (width, width) for name in "qkv"})
        shapes[f"{block}attn.in_proj_bias"] = (3 * width,)
        shapes[f"{block}attn.out_proj.weight"] = (width, width)
        shapes[f"{block}attn.out_proj.bias"] = (width,)
        for norm in ("ln_1", "ln_2"):
            shapes[f"{block}{norm}.weight"] = shapes[f"{block}{norm}.bias"] = (width,)
        shapes[f"{block}mlp.c_fc.weight"], shapes[f"{block}mlp.c_fc.bias"] = (4 * width, width), (4 * width,)
        shapes[f"{block}mlp.c_proj.weight"], shapes[f"{block}mlp.c_proj.bias"] = (width, 4 * width), (width,)
    return shapes


def catseg_shapes(layout: Layout) -> dict[str, tuple[int, ...]]:
    w, h, g = layout.width, layout.hidden, layout.guidance
    shapes: dict[str, tuple[int, ...]] = {
        f"{CLIP}visual.conv1.weight": (w, 3, layout.patch, layout.patch),
        f"{CLIP}visual.class_embedding": (w,),
        f"{CLIP}visual.positional_embedding": (1 + layout.pretrained_grid**2, w),
        f"{CLIP}visual.ln_pre.weight": (w,),
        f"{CLIP}visual.ln_pre.bias": (w,),
        f"{CLIP}visual.ln_post.weight": (w,),
        f"{CLIP}visual.ln_post.bias": (w,),
        f"{CLIP}visual.proj": (w, layout.embed),
        f"{CLIP}token_embedding.weight": (layout.vocab, layout.text_width),
        f"{CLIP}positional_embedding": (layout.context, layout.text_width),
        f"{CLIP}ln_final.weight": (layout.text_width,),
        f"{CLIP}ln_final.bias": (layout.text_width,),
        f"{CLIP}text_projection": (layout.text_width, layout.embed),
        f"{CLIP}logit_scale": (),
        "upsample1.weight": (w, layout.decoder_guidance[0], 2, 2),
        "upsample1.bias": (layout.decoder_guidance[0],),
        "upsample2.weight": (w, layout.decoder_guidance[1], 4, 4),
        "upsample2.bias": (layout.decoder_guidance[1],),
        f"{AGG}conv1.weight": (h, layout.prompts, layout.kernel, layout.kernel),
        f"{AGG}conv1.bias": (h,),
        f"{AGG}guidance_projection.0.weight": (g, layout.embed, 3, 3),
        f"{AGG}guidance_projection.0.bias": (g,),
        f"{AGG}text_guidance_projection.0.weight": (g, layout.embed),
        f"{AGG}text_guidance_projection.0.bias": (g,),
        f"{AGG}head.weight": (1, layout.decoder[1], 3, 3),
        f"{AGG}head.bias": (1,),
    }
    shapes.update(_residual_blocks(f"{CLIP}visual.", w, layout.layers))
    shapes.update(_residual_blocks(CLIP, layout.text_width, layout.text_layers))
    for stage, (guide, proj) in enumerate(
        zip(layout.decoder_guidance, layout.decoder_guidance_proj, strict=True)
    ):
        shapes[f"{AGG}decoder_guidance_projection.{stage}.0.weight"] = (proj, guide, 3, 3)
        shapes[f"{AGG}decoder_guidance_projection.{stage}.0.bias"] = (proj,)
    inputs = (h, layout.decoder[0])
    skips = layout.decoder_guidance_proj
    for stage, (dim_in, skip, dim_out) in enumerate(zip(inputs, skips, layout.decoder, strict=True), start=1):
        decoder = f"{AGG}decoder{stage}."
        shapes[f"{decoder}up.weight"], shapes[f"{decoder}up.bias"] = (
            (dim_in, dim_in - skip, 2, 2),
            (dim_in - skip,),
        )
        shapes[f"{decoder}conv.double_conv.0.weight"] = (dim_out, dim_in, 3, 3)
        shapes[f"{decoder}conv.double_conv.3.weight"] = (dim_out, dim_out, 3, 3)
        for norm in (1, 4):
            shapes[f"{decoder}conv.double_conv.{norm}.weight"] = (dim_out,)
            shapes[f"{decoder}conv.double_conv.{norm}.bias"] = (dim_out,)
    windows, tokens = (layout.grid // layout.window) ** 2, layout.window**2
    for i in range(layout.num_layers):
        swin = f"{AGG}layers.{i}.swin_block."
        shapes[f"{swin}guidance_norm.weight"] = shapes[f"{swin}guidance_norm.bias"] = (g,)
        for j in (1, 2):
            block = f"{swin}block_{j}."
            for norm in ("norm1", "norm2"):
                shapes[f"{block}{norm}.weight"] = shapes[f"{block}{norm}.bias"] = (h,)
            for name in ("q", "k"):
                shapes[f"{block}attn.{name}.weight"], shapes[f"{block}attn.{name}.bias"] = (h, h + g), (h,)
            for name in ("v", "proj"):
                shapes[f"{block}attn.{name}.weight"], shapes[f"{block}attn.{name}.bias"] = (h, h), (h,)
            shapes[f"{block}mlp.fc1.weight"], shapes[f"{block}mlp.fc1.bias"] = (4 * h, h), (4 * h,)
            shapes[f"{block}mlp.fc2.weight"], shapes[f"{block}mlp.fc2.bias"] = (h, 4 * h), (h,)
        shapes[f"{swin}block_2.attn_mask"] = (windows, tokens, tokens)
        attention = f"{AGG}layers.{i}.attention."
        for norm in ("norm1", "norm2"):
            shapes[f"{attention}{norm}.weight"] = shapes[f"{attention}{norm}.bias"] = (h,)
        for name in ("q", "k"):
            shapes[f"{attention}attention.{name}.weight"] = (h, h + g)
            shapes[f"{attention}attention.{name}.bias"] = (h,)
        shapes[f"{attention}attention.v.weight"], shapes[f"{attention}attention.v.bias"] = (h, h), (h,)
        shapes[f"{attention}MLP.0.weight"], shapes[f"{attention}MLP.0.bias"] = (4 * h, h), (4 * h,)
        shapes[f"{attention}MLP.2.weight"], shapes[f"{attention}MLP.2.bias"] = (h, 4 * h), (h,)
        shapes[f"{attention}padding_tokens"] = (1, 1, h)
        shapes[f"{attention}padding_guidance"] = (1, 1, g)
    return shapes


def swin_shift_mask(grid: int, window: int) -> torch.Tensor:
    """nW×L×L additive mask of a cyclically shifted (by window/2) Swin layer: −100 between tokens of
    different regions (the standard Swin construction)."""
    shift = window // 2
    regions = torch.zeros(grid, grid)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[rows, cols] = label
            label += 1
    windows = regions.view(grid // window, window, grid // window, window).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    different = windows[:, :, None] != windows[:, None, :]
    return torch.where(different, -100.0, 0.0)


def catseg_state(layout: Layout = Layout(), seed: int = 0) -> dict[str, torch.Tensor]:
    """Random CAT-Seg tensors: LayerNorm/GroupNorm weights near 1, the rest small, masks exact."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in catseg_shapes(layout).items():
        if key.endswith("attn_mask"):
            state[key] = swin_shift_mask(layout.grid, layout.window)
            continue
        values = torch.randn(shape, generator=generator)
        is_norm_weight = len(shape) == 1 and key.endswith(".weight") and "proj" not in key
        state[key] = 1 + 0.1 * values if is_norm_weight else 0.1 * values
    return state
