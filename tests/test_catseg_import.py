"""Importing CAT-Seg checkpoints: tiny CAT-Seg-layout files with every key of the released ones (random
values, written with torch.save), checked against a reference computed from the CAT-Seg tensors themselves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from catseg_layout import AGG, CLIP, VIT_B16, VIT_L14_336, Layout, catseg_shapes, catseg_state
from catseg_reference import catseg_logits

from lsmseg.model import LSMSeg, WeightsNotFoundError, get_config, load_checkpoint, read_metadata
from lsmseg.model.catseg_import import (
    CatSegImportError,
    catseg_config,
    import_catseg,
    main,
    write_catseg_checkpoint,
)
from lsmseg.model.config import ClipConfig, HeadConfig, LSMSegConfig
from lsmseg.prompt_cache.modes import recorded_prompt_mode, resolve_prompt_mode

LAYOUT = Layout()
PAD_LEN = 6


def tiny_variant() -> LSMSegConfig:
    """What a catseg-* preset supplies, at the tiny layout's size: taps (deeper, shallower, last), pad."""
    return LSMSegConfig(
        name="catseg-tiny",
        image_size=64,
        clip=ClipConfig(
            embed_dim=32,
            vision=dict(layers=4, width=64, head_width=32, patch_size=8),
            text=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
            quick_gelu=True,
            guidance_layers=(2, 1, 3),
            dense_mode="catseg",
        ),
        sam=None,
        head=HeadConfig(
            fusion="none",
            num_heads=2,
            appearance_source="dense",
            class_pad_len=PAD_LEN,
            class_residual="catseg",
            class_out_proj=False,
        ),
        prompts_per_class=1,
        cfm_k=10,
    )


@pytest.fixture(scope="module")
def catseg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catseg") / "model_tiny.pth"
    # As detectron2 writes it: the state dict under "model", other top-level keys beside it.
    torch.save({"model": catseg_state(LAYOUT), "iteration": 79999}, path)
    return path


@pytest.fixture(scope="module")
def imported(catseg_file: Path) -> LSMSeg:
    return import_catseg(catseg_file, tiny_variant())


def _images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _our_logits(model: LSMSeg, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    grid = model.config.grid_size
    features = model.clip_features(images)
    selection = model.select(features.dense, text[:, None], k=text.shape[0])
    return model.refine(features.dense, model.fuse(features, None), selection, (4 * grid, 4 * grid))


@torch.no_grad()
@pytest.mark.parametrize("classes", [3, 8])  # fewer classes than the pad length (padded), and more
def test_imported_logits_equal_the_reference_from_the_catseg_tensors(imported: LSMSeg, classes: int) -> None:
    state = catseg_state(LAYOUT)
    images = _images()
    text = F.normalize(torch.randn(classes, 32, generator=torch.Generator().manual_seed(classes)), dim=-1)
    normalised = (images - imported.clip.mean) / imported.clip.std
    options = dict(clip_heads=2, heads=2, pad_len=PAD_LEN)
    reference = catseg_logits(state, normalised, text, shallow=1, deep=2, **options)
    ours = _our_logits(imported, images, text)
    assert ours.shape == (2, classes, 32, 32)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)
    # The reference is sensitive to what the importer must get right, e.g. which block feeds which stage.
    crossed = catseg_logits(state, normalised, text, shallow=2, deep=1, **options)
    assert (crossed - reference).abs().max() > 1e-2


@torch.no_grad()
def test_the_tensor_transforms(imported: LSMSeg) -> None:
    state = catseg_state(LAYOUT)
    ours = imported.state_dict()
    for tower in ("visual.transformer", "transformer"):
        block = f"{tower}.resblocks.1.attn."
        packed = torch.cat([state[f"{CLIP}{block}{name}_proj_weight"] for name in "qkv"])
        assert torch.equal(ours[f"clip.model.{block}in_proj_weight"], packed)
    # Our split projections compute CAT-Seg's Linear over cat([features, guidance]).
    x, g = torch.randn(5, 32), torch.randn(5, 32)
    for ours_prefix, theirs in (
        ("layers.1.spatial.blocks.1.", f"{AGG}layers.1.swin_block.block_2.attn."),
        ("layers.0.classes.", f"{AGG}layers.0.attention.attention."),
    ):
        module = imported.get_submodule(ours_prefix.rstrip("."))
        for name, letter in (("query", "q"), ("key", "k")):
            expected = F.linear(
                torch.cat([x, g], -1), state[f"{theirs}{letter}.weight"], state[f"{theirs}{letter}.bias"]
            )
            actual = getattr(module, name)(x) + getattr(module, f"{name}_guidance")(g)
            torch.testing.assert_close(actual, expected)
    # CAT-Seg's position resize: the 4×4 table bicubic to 8×8, align_corners False, no antialias, CLS kept.
    table = state[f"{CLIP}visual.positional_embedding"]
    grid = table[1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=False)
    expected = torch.cat([table[:1], resized.permute(0, 2, 3, 1).reshape(64, 64)])
    assert torch.equal(ours["clip.model.visual.positional_embedding"], expected)
    antialiased = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    assert not torch.allclose(resized, antialiased)  # open_clip's loader resizes with antialias: not this
    # One guidance_norm per CAT-Seg block pair, copied into both of ours; pads reshaped; the ×2/×4 guidance.
    for block in (0, 1):
        assert torch.equal(
            ours[f"layers.1.spatial.blocks.{block}.guidance_norm.weight"],
            state[f"{AGG}layers.1.swin_block.guidance_norm.weight"],
        )
    assert torch.equal(
        ours["layers.0.classes.padding_token"], state[f"{AGG}layers.0.attention.padding_tokens"][0, 0]
    )
    assert torch.equal(ours["decoder.guidance_2.0.weight"], state["upsample1.weight"])
    assert torch.equal(ours["decoder.guidance_1.0.weight"], state["upsample2.weight"])
    # Tensor count: q/k/v (3) -> in_proj_weight (1) per tower block; Swin masks dropped; a 2nd guidance_norm
    # (weight, bias) per layer; q and k weights each split in two in the 3 attention modules of a layer.
    tower_blocks, layers = LAYOUT.layers + LAYOUT.text_layers, LAYOUT.num_layers
    expected = len(catseg_shapes(LAYOUT)) - 2 * tower_blocks - layers + 2 * layers + 2 * 3 * layers
    assert len(ours) == expected


def test_checkpoint_round_trip_keeps_logits_and_records_the_prompt_mode(
    catseg_file: Path, tmp_path: Path
) -> None:
    path = write_catseg_checkpoint(catseg_file, tmp_path / "catseg-tiny.safetensors", tiny_variant())
    metadata = read_metadata(path)
    assert metadata["prompt_mode"] == "catseg"
    assert metadata["extra"]["imported_from"] == "CAT-Seg"
    assert metadata["extra"]["source_file"] == "model_tiny.pth"
    assert len(metadata["extra"]["source_sha256"]) == 64
    assert metadata["domain"].startswith("real photos")
    imported = import_catseg(catseg_file, tiny_variant())
    loaded = load_checkpoint(path)
    assert loaded.config == imported.config
    text = F.normalize(torch.randn(4, 1, 32), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images(), text), imported(_images(), text), atol=0, rtol=0)
        prompts = [["A photo of a cat in the scene"]]
        torch.testing.assert_close(loaded.encode_text(prompts), imported.encode_text(prompts), atol=0, rtol=0)


def test_older_checkpoints_read_as_attribute_prompts(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lsmseg.model import build_model, save_checkpoint

    path = save_checkpoint(build_model("tiny"), tmp_path / "tiny.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    del metadata["prompt_mode"]
    save_file(tensors, str(path), metadata=metadata)
    assert read_metadata(path)["prompt_mode"] is None
    assert recorded_prompt_mode(read_metadata(path)) == "attributes"
    # The mode's vocabulary is prompt_cache's: an unknown one is refused where a checkpoint is put to use.
    odd = save_checkpoint(build_model("tiny"), tmp_path / "odd.safetensors", prompt_mode="llm")
    with pytest.raises(ValueError, match="unknown prompt mode 'llm'"):
        resolve_prompt_mode(recorded_prompt_mode(read_metadata(odd)), None, 2)


@pytest.mark.parametrize(
    ("layout", "preset"), [(VIT_B16, "catseg-vit-b16"), (VIT_L14_336, "catseg-vit-l14-336")]
)
def test_released_sizes_give_the_presets(layout: Layout, preset: str) -> None:
    shapes = {key: torch.empty(shape, device="meta") for key, shape in catseg_shapes(layout).items()}
    assert len(shapes) == (484 if preset == "catseg-vit-b16" else 652)
    assert catseg_config(shapes) == get_config(preset)  # variant chosen by the CLIP width


def _save(tmp_path: Path, content: object, name: str = "model.pth") -> Path:
    path = tmp_path / name
    torch.save(content, path)
    return path


def _refusal(tmp_path: Path, state: dict, **kwargs: object) -> str:
    with pytest.raises(CatSegImportError) as error:
        import_catseg(_save(tmp_path, {"model": state}), kwargs.get("variant", tiny_variant()))
    return str(error.value)


def test_wrong_layouts_are_refused_with_what_was_found(tmp_path: Path) -> None:
    state = catseg_state(LAYOUT)
    old = {"backbone.layers.0.blocks.0.norm1.weight": torch.ones(4), **state}
    assert "older CAT-Seg release" in _refusal(tmp_path, old)
    assert "backbone.layers.0.blocks.0.norm1.weight" in _refusal(tmp_path, old)
    no_pads = {k: v for k, v in state.items() if "padding_" not in k}
    assert "no class-attention padding tokens" in _refusal(tmp_path, no_pads)
    two_prompts = {**state, f"{AGG}conv1.weight": torch.zeros(32, 2, 3, 3)}
    assert "takes 2 prompt channels" in _refusal(tmp_path, two_prompts)
    assert "no sem_seg_head.predictor.clip_model.visual.conv1.weight" in _refusal(
        tmp_path, {"w": torch.zeros(2)}
    )
    extra = {**state, f"{AGG}layers.0.attention.attention.out.weight": torch.zeros(32, 32)}
    assert "1 tensors that CAT-Seg's CVPR'24 network does not have" in _refusal(tmp_path, extra)
    missing = {k: v for k, v in state.items() if k != f"{AGG}head.bias"}
    assert f"missing 1 CAT-Seg tensors: {AGG}head.bias" in _refusal(tmp_path, missing)
    wide = {**state, f"{AGG}text_guidance_projection.0.bias": torch.zeros(33)}
    assert "unexpected shapes" in _refusal(tmp_path, wide)
    bad_mask = {**state, f"{AGG}layers.1.swin_block.block_2.attn_mask": torch.zeros(4, 16, 16)}
    assert "is not the shifted-window mask of window 4" in _refusal(tmp_path, bad_mask)
    wrong_size = LSMSegConfig.from_json(tiny_variant().to_json()).replace(image_size=96)
    assert "for a 8² feature grid" in _refusal(tmp_path, state, variant=wrong_size)


def test_files_that_are_no_state_dict_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CatSegImportError, match="holds a Tensor, not a CAT-Seg state dict"):
        import_catseg(_save(tmp_path, torch.zeros(3)))
    with pytest.raises(CatSegImportError, match="not a state dict of tensors: step"):
        import_catseg(_save(tmp_path, {"model": {"step": 3}}))
    text_file = tmp_path / "notes.pth"
    text_file.write_text("not a checkpoint")
    with pytest.raises(CatSegImportError, match="not a torch checkpoint that loads without running code"):
        import_catseg(text_file)
    with pytest.raises(WeightsNotFoundError, match=r"hamacojr/CAT-Seg-weights/resolve/main/model_base\.pth"):
        import_catseg(tmp_path / "model_base.pth")


def test_cli_writes_nothing_and_exits_2_on_a_refusal(catseg_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["catseg", str(catseg_file), "-o", str(out)])
    assert exit_info.value.code == 2
    assert "CLIP vision width 64 is neither ViT-B/16 (768) nor ViT-L/14 (1024)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@torch.no_grad()
def test_full_size_vit_b16_import_equals_the_reference(tmp_path: Path) -> None:
    """The released B/16 geometry: 14² table to 24², window 12 on 24², pad 256, taps 7 (×4) and 3 (×2)."""
    state = catseg_state(VIT_B16)
    model = import_catseg(_save(tmp_path, {"model": state}, "model_base.pth"))
    assert model.config == get_config("catseg-vit-b16")
    images = _images(1, 384)
    text = F.normalize(torch.randn(5, 512, generator=torch.Generator().manual_seed(5)), dim=-1)
    normalised = (images - model.clip.mean) / model.clip.std
    reference = catseg_logits(state, normalised, text, clip_heads=12, heads=4, pad_len=256, shallow=3, deep=7)
    torch.testing.assert_close(_our_logits(model, images, text), reference, atol=1e-4, rtol=1e-4)


def test_an_imported_checkpoint_serves_with_no_other_setting(
    catseg_file: Path, tmp_path: Path, redis_url: str
) -> None:
    from service_server import ServiceProcess, image_bytes

    path = write_catseg_checkpoint(catseg_file, tmp_path / "catseg-tiny.safetensors", tiny_variant())
    service = ServiceProcess(tmp_path / "service.log", checkpoint=path, redis_url=redis_url).start()
    try:
        with service.client() as client:
            model = client.readiness()["model"]
            assert model["name"] == "catseg-tiny" and model["source"] == "checkpoint"
            assert (model["image_size"], model["prompts_per_class"]) == (64, 1)
            classes = ["cat", "sofa", "wall"]
            result = client.segment(image_bytes(80, 60, seed=4), classes=classes, output="both")
        assert result.label_map.shape == (60, 80)
        assert {segment.class_name for segment in result.segments} <= set(classes)
        assert sum(segment.area for segment in result.segments) == 80 * 60
    finally:
        service.stop()


def test_lsmseg_training_from_an_import_starts_exactly_at_it_and_then_moves(
    catseg_file: Path, tmp_path: Path
) -> None:
    from lsmseg.training.datasets import SyntheticScenes
    from lsmseg.training.train import TrainConfig, Trainer

    path = write_catseg_checkpoint(catseg_file, tmp_path / "catseg-tiny.safetensors", tiny_variant())
    config = TrainConfig(
        preset="tiny",  # whose (tiny, random) SAM is added; the full-size presets' is SAM-L
        init=str(path),
        fusion="weight",
        iterations=1,
        batch_size=2,
        lr=1e-2,
        grad_clip=None,
        num_workers=0,
        output_dir=str(tmp_path / "run"),
        device="cpu",
    )
    trainer = Trainer(config, dataset=SyntheticScenes("train", num_images=4, image_size=64, seed=3))
    model = trainer.model
    assert model.sam is not None and model.config.head.fusion_gate
    assert [level.gate.shape[0] for level in model.fusion.levels] == [64, 64, 32]  # E_3 = dense, at E
    imported = load_checkpoint(path)
    text = F.normalize(torch.randn(5, 1, 32), dim=-1)
    with torch.no_grad():
        start = model.eval()(_images(), text)
        torch.testing.assert_close(start, imported(_images(), text), atol=0, rtol=0)  # step 0: the import
    model.train()
    trainer.fit()
    assert all(level.gate.abs().max() > 0 for level in model.fusion.levels)  # the gate moved first
    images, labels = next(trainer._batches())
    trainer.step(images, labels).backward()  # now the gradient reaches the adapters and weight generators
    for level in model.fusion.levels:
        assert level.adapter.mlp[0].weight.grad.abs().max() > 0
        assert level.weight_generator.local[-1].weight.grad.abs().max() > 0
    assert all(param.grad is None for param in model.sam.parameters())  # SAM stays frozen
    with torch.no_grad():
        assert (model.eval()(_images(), text) - start).abs().max() > 1e-4
    final = read_metadata(tmp_path / "run" / "final.safetensors")
    # Trained as the import records (its CAT-Seg template) unless prompt_mode= says otherwise.
    assert final["config"].name == "catseg-tiny+sam" and final["prompt_mode"] == "catseg"
    with pytest.raises(ValueError, match="fusion= adds SAM to an init= checkpoint"):
        TrainConfig(fusion="weight")
