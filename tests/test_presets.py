"""Every preset builds, survives JSON and checkpoints; the full-size ones build from the real open_clip /
segment-anything classes (random weights here)."""

from pathlib import Path

import pytest
import torch

from lsmseg.model import (
    PRESETS,
    LSMSeg,
    LSMSegConfig,
    build_model,
    get_config,
    load_checkpoint,
    save_checkpoint,
)
from lsmseg.model.config import PRETRAINED

# Above this many parameters a save/load round trip writes gigabytes: the full-size presets are checked on the
# meta device (same tensors after JSON) and, for catseg-vit-b16, by the importer's full-size test.
ROUND_TRIP_MAX_PARAMETERS = 50_000_000


def test_registry_names() -> None:
    assert {"tiny", "vit-b16-sam-l", "vit-l14-sam-l", "catseg-vit-b16", "catseg-vit-l14-336"} <= set(PRESETS)
    with pytest.raises(KeyError, match="known presets"):
        get_config("vit-h")


def test_weight_provenance_comes_from_the_pretrained_table() -> None:
    sam = get_config("vit-b16-sam-l").sam
    assert (sam.registry_name, sam.checkpoint_file, sam.checkpoint_url) == (
        PRETRAINED["sam-vit-l"].architecture,
        PRETRAINED["sam-vit-l"].file,
        PRETRAINED["sam-vit-l"].url,
    )
    clip = get_config("vit-l14-sam-l").clip
    assert (clip.open_clip_name, clip.pretrained_tag) == ("ViT-L-14-336", "openai")
    # The CAT-Seg presets' CLIP comes from the CAT-Seg file, not from an open_clip tag.
    assert get_config("catseg-vit-b16").clip.pretrained_tag is None
    assert PRETRAINED["catseg-vit-b16"].file == "model_base.pth"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_survives_json_with_the_same_tensors(name: str) -> None:
    config = get_config(name)
    rebuilt_config = LSMSegConfig.from_json(config.to_json())
    assert rebuilt_config == config
    with torch.device("meta"):
        shapes = {key: t.shape for key, t in LSMSeg(config).state_dict().items()}
        rebuilt = {key: t.shape for key, t in LSMSeg(rebuilt_config).state_dict().items()}
    assert rebuilt == shapes
    if name == "catseg-vit-b16":  # CAT-Seg's 484 tensors map onto these (docs/model.md)
        assert len(shapes) == 450


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    config = get_config(name)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LSMSeg(config).parameters())
    if parameters > ROUND_TRIP_MAX_PARAMETERS:
        pytest.skip(f"{parameters / 1e6:.0f} M parameters: checked on the meta device instead")
    torch.manual_seed(0)
    model = build_model(config).eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / f"{name}.safetensors"))
    assert loaded.config == config
    size = config.image_size
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    text = torch.randn(6, config.prompts_per_class, config.clip.embed_dim)
    text = torch.nn.functional.normalize(text, dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, text), model(images, text), atol=0, rtol=0)


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
