"""The CAT-Seg compatibility flags, each checked against a hand computation on random weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from lsmseg.model import LSMSeg, build_model, get_config
from lsmseg.model.clip_backbone import ClipBackbone
from lsmseg.model.config import LSMSegConfig
from lsmseg.model.refinement import ClassRefinement


def _images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (zero-initialised pads and biases would hide mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))


def _normalised(backbone: ClipBackbone, images: torch.Tensor) -> torch.Tensor:
    return (images - backbone.mean) / backbone.std


@torch.no_grad()
def test_catseg_dense_mode_runs_the_last_block_value_only_with_the_input_class_token() -> None:
    config = get_config("tiny").clip
    config.dense_mode = "catseg"
    torch.manual_seed(0)
    backbone = ClipBackbone(config, 64).eval()
    images = _images()
    ours = backbone(images).dense

    visual = backbone.model.visual
    tokens = visual.conv1(_normalised(backbone, images)).flatten(2).transpose(1, 2)  # B×64×W
    cls = visual.class_embedding.expand(2, 1, -1)
    x = visual.ln_pre(torch.cat([cls, tokens], dim=1) + visual.positional_embedding)
    *first, last = visual.transformer.resblocks
    for block in first:
        x = block(x)
    width = x.shape[-1]
    w_v, b_v = last.attn.in_proj_weight[2 * width :], last.attn.in_proj_bias[2 * width :]
    value = last.ln_1(x) @ w_v.T + b_v
    y = value @ last.attn.out_proj.weight.T + last.attn.out_proj.bias + x[:, :1]  # the input's CLS, broadcast
    y = y + last.mlp(last.ln_2(y))
    expected = (visual.ln_post(y[:, 1:]) @ visual.proj).transpose(1, 2).reshape(2, -1, 8, 8)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    # A real change: the standard last block gives different dense features.
    config.dense_mode = "standard"
    assert (backbone(images).dense - ours).abs().max() > 1e-2


@torch.no_grad()
def test_guidance_taps_come_in_config_order_and_may_repeat() -> None:
    config = get_config("tiny").clip
    torch.manual_seed(0)
    backbone = ClipBackbone(config, 64).eval()
    images = _images()
    by_block = backbone.model.visual.forward_intermediates(_normalised(backbone, images), indices=[0, 1, 2])
    blocks = by_block["image_intermediates"]
    for order in ((2, 0, 1), (1, 1, 2)):
        backbone.config = type(config)(**{**vars(config), "guidance_layers": order})
        taps = backbone(images).layers
        for tap, index in zip(taps, order, strict=True):
            torch.testing.assert_close(tap, blocks[index], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"three block indexes in \[0, 3\)"):
        type(config)(**{**vars(config), "guidance_layers": (0, 1, 3)})


def _class_layer(pad_len: int = 0, residual: str = "single", pool: int = 1, seed: int = 1) -> ClassRefinement:
    layer = ClassRefinement(16, 8, num_heads=2, pad_len=pad_len, residual=residual, pool=pool)
    _randomise(layer, seed)
    return layer.eval()


@torch.no_grad()
def test_padded_class_attention_equals_attention_over_appended_pad_tokens() -> None:
    padded = _class_layer(pad_len=7)
    plain = _class_layer(pad_len=0)
    plain.load_state_dict({k: v for k, v in padded.state_dict().items() if not k.startswith("padding_")})
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 2, 3, 16, generator=generator)  # B×K×h×w×C, K = 5 slots
    guidance = torch.randn(3, 5, 8, generator=generator)
    valid = torch.tensor([5, 3, 1])  # classes per sample; the rest are batch padding
    mask = torch.arange(5)[None] < valid[:, None]
    ours = padded(x, guidance, mask)
    for b, n in enumerate(valid.tolist()):
        pads = 7 - n
        explicit_x = torch.cat([x[b, :n], padded.padding_token.expand(pads, 2, 3, 16)])[None]
        explicit_g = torch.cat([guidance[b, :n], padded.padding_guidance.expand(pads, 8)])[None]
        reference = plain(explicit_x, explicit_g, torch.ones(1, 7, dtype=torch.bool))[0, :n]
        torch.testing.assert_close(ours[b, :n], reference, atol=1e-5, rtol=1e-5)
    # Pads matter (they are not a no-op), and a sample with at least pad_len classes gets none.
    assert (ours[1, :3] - plain(x[1:2, :3], guidance[1:2, :3], mask[1:2, :3])[0]).abs().max() > 1e-3
    many_x, many_g = torch.randn(1, 9, 2, 3, 16), torch.randn(1, 9, 8)
    everything = torch.ones(1, 9, dtype=torch.bool)
    torch.testing.assert_close(padded(many_x, many_g, everything), plain(many_x, many_g, everything))


@torch.no_grad()
def test_catseg_class_residual_is_two_x_plus_delta_and_pools_when_asked() -> None:
    single = _class_layer(residual="single")
    catseg = _class_layer(residual="catseg")
    x = torch.randn(2, 4, 6, 6, 16, generator=torch.Generator().manual_seed(3))
    guidance = torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.bool)
    delta = single(x, guidance, mask) - x
    torch.testing.assert_close(catseg(x, guidance, mask), 2 * x + delta, atol=1e-5, rtol=1e-5)

    pooled_layer = _class_layer(residual="catseg", pool=2)
    channels_first = x.flatten(0, 1).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(channels_first, 2).permute(0, 2, 3, 1).unflatten(0, (2, 4))  # 3×3 pixels
    refined = single(pooled, guidance, mask).flatten(0, 1).permute(0, 3, 1, 2)
    up = F.interpolate(refined, size=(6, 6), mode="bilinear", align_corners=True)
    expected = x + up.permute(0, 2, 3, 1).unflatten(0, (2, 4))
    torch.testing.assert_close(pooled_layer(x, guidance, mask), expected, atol=1e-5, rtol=1e-5)


def _catseg_tiny() -> LSMSegConfig:
    config = get_config("tiny")
    config.clip.dense_mode = "catseg"
    config.head.appearance_source = "dense"
    config.head.class_pad_len = 16
    config.head.class_residual = "catseg"
    config.head.class_out_proj = False
    return config


@torch.no_grad()
def test_appearance_from_dense_features_and_no_class_output_projection() -> None:
    config = _catseg_tiny()
    config.head.fusion_gate = True
    torch.manual_seed(0)
    model = build_model(config).eval()
    assert model.appearance_guidance[0].weight.shape == (32, 32, 3, 3)  # E = 32 input channels, not W = 64
    assert [level.gate.shape[0] for level in model.fusion.levels] == [64, 64, 32]
    assert isinstance(model.layers[0].classes.out, torch.nn.Identity)
    assert not any(".classes.out." in key for key in model.state_dict())
    features = model.clip_features(_images())
    first, second, third = model.fuse(features, None)
    assert first is features.layers[0] and second is features.layers[1] and third is features.dense


def test_new_fields_round_trip_and_old_configs_read_as_before() -> None:
    config = _catseg_tiny()
    config.head.class_pool = 2
    assert LSMSegConfig.from_json(config.to_json()) == config
    raw = json.loads(get_config("tiny").to_json())
    for key in ("appearance_source", "class_pad_len", "class_residual", "class_pool", "class_out_proj"):
        del raw["head"][key]
    del raw["head"]["fusion_gate"], raw["clip"]["dense_mode"]
    assert LSMSegConfig.from_json(json.dumps(raw)) == get_config("tiny")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("appearance_source", "sam", "appearance_source must be one of"),
        ("class_residual", "double", "class_residual must be one of"),
        ("class_pad_len", -1, "class_pad_len must be 0"),
        ("class_pool", 2, "class_pool 2 needs class_residual 'catseg'"),
    ],
)
def test_bad_head_flags_are_refused(field: str, value: object, message: str) -> None:
    head = get_config("tiny").head
    with pytest.raises(ValueError, match=message):
        type(head)(**{**vars(head), field: value})


def test_gate_without_weight_fusion_and_unknown_dense_mode_are_refused() -> None:
    head = get_config("tiny").head
    with pytest.raises(ValueError, match="fusion_gate gates the weight generator"):
        type(head)(**{**vars(head), "fusion": "mean", "fusion_gate": True})
    with pytest.raises(ValueError, match="dense_mode must be one of"):
        clip = get_config("tiny").clip
        type(clip)(**{**vars(clip), "dense_mode": "dense"})


@torch.no_grad()
def test_zero_gate_fusion_starts_exactly_at_the_clip_only_model() -> None:
    config = _catseg_tiny()
    config.head.fusion_gate = True
    torch.manual_seed(0)
    gated = build_model(config).eval()
    without_sam = copy.deepcopy(config)
    without_sam.head.fusion, without_sam.head.fusion_gate, without_sam.sam = "none", False, None
    clip_only = LSMSeg(without_sam).eval()
    clip_only.load_state_dict(
        {k: v for k, v in gated.state_dict().items() if not k.startswith(("sam.", "fusion."))}
    )
    text = F.normalize(torch.randn(5, 2, 32), dim=-1)
    torch.testing.assert_close(gated(_images(), text), clip_only(_images(), text), atol=0, rtol=0)
    for level in gated.fusion.levels:
        level.gate.fill_(1.0)  # γ = 1 is the paper's fusion: α·F_c + (1 − α)·F_s
    level = gated.fusion.levels[0]
    clip_map, sam_map = torch.randn(1, 64, 8, 8), torch.randn(1, 32, 8, 8)
    torch.testing.assert_close(
        level(clip_map, sam_map), 0.5 * clip_map + 0.5 * level.adapter(sam_map, (8, 8))
    )
