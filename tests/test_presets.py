"""The full-size presets build from the real open_clip / segment-anything classes (random weights here)."""

import pytest
import torch

from model import PRESETS, build_model, get_config


def test_registry_names() -> None:
    assert {"tiny", "vit-b16-sam-l", "vit-l14-sam-l"} <= set(PRESETS)
    with pytest.raises(KeyError, match="known presets"):
        get_config("vit-h")


def test_get_config_returns_a_private_copy() -> None:
    config = get_config("tiny")
    config.cfm_k = 1
    assert PRESETS["tiny"].cfm_k == 8


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "sam_size", "width", "embed_dim", "sam_grid"),
    [
        ("vit-b16-sam-l", 1024, 768, 512, 64),  # the design's sizes: CLIP 384² -> 24×24, SAM 1024² -> 64×64
        ("vit-l14-sam-l", 336, 1024, 768, 21),  # SAM input is configurable; smaller here to keep CI quick
    ],
)
def test_full_size_presets(preset: str, sam_size: int, width: int, embed_dim: int, sam_grid: int) -> None:
    config = get_config(preset)
    config.sam.input_size = sam_size
    torch.manual_seed(0)
    model = build_model(config).eval()
    assert model.config.grid_size == 24
    assert len(model.sam.encoder.blocks) == 24 and model.sam.config.feature_layers == (11, 17, 23)
    image = torch.rand(1, 3, config.image_size, config.image_size)
    text = torch.nn.functional.normalize(torch.randn(40, 1, embed_dim), dim=-1)
    with torch.inference_mode():
        clip = model.clip_features(image)
        sam = model.sam_features(image)
        guidance = model.fuse(clip, sam)
        selection = model.select(clip.dense, text)
        logits = model.refine(clip.dense, guidance, selection, (config.image_size, config.image_size))
        prompt_text = model.encode_text([["a photo of a cat"], ["a photo of a dog"]])
    assert clip.dense.shape == (1, embed_dim, 24, 24)
    assert [layer.shape for layer in clip.layers] == [(1, width, 24, 24)] * 3
    assert [s.shape for s in sam] == [(1, 1024, sam_grid, sam_grid)] * 3
    assert [e.shape for e in guidance] == [(1, width, 24, 24)] * 3
    assert selection.indices.shape == (1, 32)
    assert logits.shape == (1, 32, config.image_size, config.image_size)
    assert torch.isfinite(logits).all()
    assert prompt_text.shape == (2, 1, embed_dim)
