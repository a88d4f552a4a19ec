"""Checkpoints round-trip exactly, never unpickle, and missing weights give messages that say what to do."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lsmseg.model import (
    LSMSeg,
    WeightsNotFoundError,
    build_model,
    clip_weights_file,
    get_config,
    load_checkpoint,
    load_clip_weights,
    load_sam_weights,
    read_metadata,
    save_checkpoint,
)


def test_round_trip_gives_identical_logits(tiny_model: LSMSeg, tiny_text, tmp_path: Path) -> None:
    path = save_checkpoint(
        tiny_model, tmp_path / "tiny.safetensors", extra={"prompt_version": "attr-v1", "step": 7}
    )
    loaded = load_checkpoint(path)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, tiny_text), tiny_model(x, tiny_text), atol=0, rtol=0)
        prompts = [["a photo of thing 3", "thing number 3"]]
        torch.testing.assert_close(
            loaded.encode_text(prompts), tiny_model.encode_text(prompts), atol=0, rtol=0
        )
    assert loaded.text_fingerprint() == tiny_model.text_fingerprint()
    metadata = read_metadata(path)
    assert metadata["config"] == tiny_model.config
    assert metadata["prompt_version"] == "attr-v1"
    assert metadata["extra"] == {"step": 7}
    assert metadata["includes_sam"] is True
    assert not loaded.training


def test_conv_stem_checkpoint_round_trip_and_configs_written_before_the_stem(tmp_path: Path) -> None:
    config = get_config("tiny")
    config.clip.conv_stem = (8, 16, 32)
    torch.manual_seed(0)
    model = build_model(config).eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "stem.safetensors"))
    assert loaded.config.clip.conv_stem == (8, 16, 32)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.clip_features(x).dense
        torch.testing.assert_close(loaded.clip_features(x).dense, expected, atol=0, rtol=0)
    # A config JSON without the field (checkpoints written before it) reads as "no stem".
    raw = json.loads(get_config("tiny").to_json())
    del raw["clip"]["conv_stem"]
    assert type(config).from_json(json.dumps(raw)).clip.conv_stem == ()


def test_official_sam_weights_are_left_out_and_then_required(tiny_model: LSMSeg, tmp_path: Path) -> None:
    # A tiny model that pretends its SAM weights come from an official file.
    config = get_config("tiny")
    config.sam.checkpoint_file = "sam_tiny_official.pth"
    config.sam.checkpoint_url = "https://example.invalid/sam_tiny_official.pth"
    model = build_model(config)
    model.load_state_dict(tiny_model.state_dict())
    path = save_checkpoint(model, tmp_path / "no_sam.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert not any(key.startswith("sam.") for key in handle.keys())  # noqa: SIM118
    with pytest.raises(WeightsNotFoundError, match=r"sam_tiny_official\.pth") as error:
        load_checkpoint(path)
    assert "https://example.invalid/sam_tiny_official.pth" in str(error.value)

    # An official-style .pth: {"image_encoder.*": ...} plus keys the loader must skip.
    official = {f"image_encoder.{k}": v for k, v in tiny_model.sam.encoder.state_dict().items()}
    official["image_encoder.neck.0.weight"] = torch.zeros(1)
    official["mask_decoder.iou_token.weight"] = torch.zeros(1)
    sam_file = tmp_path / "sam_tiny_official.pth"
    torch.save(official, sam_file)
    loaded = load_checkpoint(path, sam_checkpoint=sam_file)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_sam_file_names_the_file_and_the_download() -> None:
    model = build_model(get_config("tiny"))
    model.sam.config.checkpoint_file = "sam_vit_l_0b3195.pth"
    model.sam.config.checkpoint_url = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"
    with pytest.raises(WeightsNotFoundError) as error:
        load_sam_weights(model, "/models/sam_vit_l_0b3195.pth")
    message = str(error.value)
    assert "/models/sam_vit_l_0b3195.pth" in message
    assert "dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth" in message


def test_missing_clip_file_and_unreachable_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("tiny")
    with pytest.raises(WeightsNotFoundError, match=r"/nowhere/clip\.safetensors"):
        load_clip_weights(model, "/nowhere/clip.safetensors")
    with pytest.raises(WeightsNotFoundError, match="no open_clip architecture"):
        load_clip_weights(model, "openai")


def test_a_clip_weights_source_is_a_local_file_or_an_open_clip_tag(tmp_path: Path) -> None:
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"")
    assert clip_weights_file(weights) == weights and clip_weights_file(str(weights)) == weights
    assert clip_weights_file("openai") is None and clip_weights_file("laion2b_s34b_b88k") is None
    for missing in ("/nowhere/clip.pt", "clip.safetensors", "weights/openai"):
        with pytest.raises(WeightsNotFoundError, match=f"{missing!r} does not exist") as error:
            clip_weights_file(missing)
        assert error.value.part == "clip" and "LSMSEG" not in str(error.value)


def test_clip_weights_from_a_local_file_are_loaded(tmp_path: Path) -> None:
    source = build_model("tiny")
    torch.manual_seed(5)
    target = build_model("tiny")
    weights = tmp_path / "clip.pt"
    torch.save(source.clip.model.state_dict(), weights)
    load_clip_weights(target, weights)
    for key, value in source.clip.model.state_dict().items():
        assert torch.equal(target.clip.model.state_dict()[key], value), key


def test_unreachable_open_clip_tag_explains_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def offline(*_args, **_kwargs):
        raise OSError("no network")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    config = get_config("tiny")
    config.clip.open_clip_name = "ViT-B-16-quickgelu"
    model = build_model(config)
    with pytest.raises(WeightsNotFoundError) as error:
        load_clip_weights(model, "openai")
    message = str(error.value)
    assert "ViT-B-16-quickgelu/openai" in message
    assert "huggingface.co/timm/vit_base_patch16_clip_224.openai" in message
    with pytest.raises(WeightsNotFoundError, match="no tag 'not-a-tag'"):
        load_clip_weights(model, "not-a-tag")


def test_loading_never_unpickles(tmp_path: Path) -> None:
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(Exception) as error:
        load_checkpoint(bogus)
    assert not isinstance(error.value, WeightsNotFoundError)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": json.dumps("something")})
    with pytest.raises(ValueError, match="not an LSMSeg checkpoint"):
        load_checkpoint(path)


def test_domain_round_trips_and_is_none_when_unsaid(tiny_model: LSMSeg, tmp_path: Path) -> None:
    said = save_checkpoint(tiny_model, tmp_path / "said.safetensors", domain="street photos of Oslo")
    assert read_metadata(said)["domain"] == "street photos of Oslo"
    assert read_metadata(save_checkpoint(tiny_model, tmp_path / "unsaid.safetensors"))["domain"] is None
