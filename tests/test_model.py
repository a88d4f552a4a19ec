"""The LSMSeg network on the `tiny` preset: every stage's shapes and values, fine-tuning scope, fusion."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lsmseg.model import LSMSeg, build_model, get_config
from lsmseg.model.fusion import WeightGenerator


def images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_clip_dense_features_are_projected_patch_tokens(tiny_model: LSMSeg) -> None:
    x = images()
    features = tiny_model.clip_features(x)
    assert features.dense.shape == (2, 32, 8, 8)  # D = embed_dim, 64 / patch 8
    assert [layer.shape for layer in features.layers] == [(2, 64, 8, 8)] * 3
    # Same numbers as open_clip's own forward: tokens after ln_post, times proj.
    visual = tiny_model.clip.model.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual((x - tiny_model.clip.mean) / tiny_model.clip.std)
    finally:
        visual.output_tokens = False
    expected = (tokens @ visual.proj).transpose(1, 2).reshape(2, 32, 8, 8)
    torch.testing.assert_close(features.dense, expected, atol=1e-5, rtol=1e-5)
    # Intermediate layers equal open_clip's forward_intermediates for the configured blocks.
    reference = visual.forward_intermediates(
        (x - tiny_model.clip.mean) / tiny_model.clip.std, indices=list(tiny_model.config.clip.guidance_layers)
    )["image_intermediates"]
    for ours, theirs in zip(features.layers, reference, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_position_embeddings_follow_the_input_size(tiny_model: LSMSeg) -> None:
    with torch.no_grad():
        features = tiny_model.clip_features(images(1, 96))
        sam = tiny_model.sam_features(images(1, 96))
    assert features.dense.shape == (1, 32, 12, 12)
    # SAM always runs at its configured input size.
    assert [s.shape for s in sam] == [(1, 32, 8, 8)] * 3
    same = tiny_model.clip._position_embedding(8, 8)
    assert same is tiny_model.clip.model.visual.positional_embedding
    grown = tiny_model.clip._position_embedding(12, 12)
    assert grown.shape == (1 + 144, 64)
    torch.testing.assert_close(grown[0], same[0])  # the class token's embedding is kept


def test_sam_features_are_the_last_three_global_blocks(tiny_model: LSMSeg) -> None:
    assert tiny_model.config.sam.feature_layers == (3, 5, 7)
    encoder = tiny_model.sam.encoder
    captured = {}
    hooks = [
        encoder.blocks[i].register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out))
        for i in (3, 5, 7)
    ]
    try:
        with torch.no_grad():
            ours = tiny_model.sam_features(images())
    finally:
        for hook in hooks:
            hook.remove()
    for feature, index in zip(ours, (3, 5, 7), strict=True):
        torch.testing.assert_close(feature, captured[index].permute(0, 3, 1, 2))
    assert not any(p.requires_grad for p in tiny_model.sam.parameters())


def test_weight_generator_starts_at_exactly_one_half(tiny_model: LSMSeg) -> None:
    generator = WeightGenerator(16)
    alpha = generator(torch.randn(2, 16, 5, 5), torch.randn(2, 16, 5, 5))
    assert alpha.shape == (2, 16, 5, 5)
    assert torch.all(alpha == 0.5)
    # So at init the fused map is the plain average of CLIP and adapted SAM features.
    level = tiny_model.fusion.levels[0]
    clip_map, sam_map = torch.randn(1, 64, 8, 8), torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        fused = level(clip_map, sam_map)
        expected = 0.5 * clip_map + 0.5 * level.adapter(sam_map, (8, 8))
    torch.testing.assert_close(fused, expected)


@pytest.mark.parametrize("mode", ["mean", "concat", "none"])
def test_fusion_variants_build_and_run(mode: str) -> None:
    config = get_config("tiny")
    config.head.fusion = mode
    if mode == "none":
        config.sam = None
    model = build_model(config).eval()
    assert (model.sam is None) == (mode == "none")
    text = model.encode_text([["a", "b"], ["c", "d"], ["e", "f"]])
    with torch.no_grad():
        logits = model(images(), text)
    assert logits.shape == (2, 3, 64, 64)
    assert torch.isfinite(logits).all()


def test_fusion_mode_needs_matching_sam_config() -> None:
    config = get_config("tiny")
    with pytest.raises(ValueError, match="SAM config"):
        config.replace(sam=None)
    with pytest.raises(ValueError, match="fusion must be one of"):
        type(config.head)(fusion="sum")


def test_forward_logits_over_original_classes_with_filtered_at_minus_inf(tiny_model, tiny_text) -> None:
    with torch.no_grad():
        output = tiny_model(images(), tiny_text, return_selection=True)
        full = tiny_model(images(), tiny_text)
    assert output.logits.shape == (2, 8, 64, 64)  # k = 8 of 12 classes
    assert full.shape == (2, 12, 64, 64)
    for b in range(2):
        kept = output.indices[b]
        dropped = [c for c in range(12) if c not in kept.tolist()]
        assert len(dropped) == 4
        assert torch.isneginf(full[b, dropped]).all()
        torch.testing.assert_close(full[b, kept], output.logits[b])
        winners = full[b].argmax(dim=0).unique().tolist()
        assert set(winners) <= set(kept.tolist())
        assert torch.all(full[b].softmax(dim=0)[dropped] == 0)
    assert torch.isfinite(output.logits).all()


def test_k_controls_the_number_of_refined_classes(tiny_model, tiny_text) -> None:
    with torch.no_grad():
        for k, expected in ((3, 3), (12, 12), (100, 12)):
            output = tiny_model(images(1), tiny_text, k=k, return_selection=True)
            assert output.logits.shape[1] == expected


def test_class_refinement_ignores_class_order(tiny_model, tiny_text) -> None:
    permutation = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    x = images(1)
    with torch.no_grad():
        plain = tiny_model(x, tiny_text, k=12)
        permuted = tiny_model(x, tiny_text[permutation], k=12)
    torch.testing.assert_close(permuted, plain[:, permutation], atol=1e-4, rtol=1e-4)


def test_mixed_vocabularies_in_one_batch_match_separate_runs(tiny_model, tiny_text) -> None:
    x = images(2)
    small = tiny_text[[1, 4, 9]]
    with torch.no_grad():
        mixed = tiny_model(x, [tiny_text, small], return_selection=True)
        alone_big = tiny_model(x[:1], tiny_text, return_selection=True)
        alone_small = tiny_model(x[1:], small, return_selection=True)
    torch.testing.assert_close(mixed.logits[0], alone_big.logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed.logits[1, :3], alone_small.logits[0], atol=1e-4, rtol=1e-4)
    assert torch.isneginf(mixed.logits[1, 3:]).all()
    with pytest.raises(ValueError, match="return_selection"):
        tiny_model(x, [tiny_text, small])


def test_long_prompts_are_truncated_not_rejected(tiny_model) -> None:
    long_prompt = "a very long description of a striped blue ring " * 30
    tokens = tiny_model.clip.tokenizer([long_prompt])
    assert tokens.shape == (1, 77)
    assert tokens[0, -1].item() == tiny_model.clip.tokenizer.eot_token_id
    with torch.no_grad():
        text = tiny_model.encode_text([[long_prompt, "short"]])
    assert text.shape == (1, 2, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(1, 2))


def test_wrong_prompt_count_is_an_error(tiny_model) -> None:
    with pytest.raises(ValueError, match="exactly 2 prompts per class"):
        tiny_model.encode_text([["only one"]])


def test_text_fingerprint_tracks_text_weights_only() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    before = model.text_fingerprint()
    assert before == model.text_fingerprint()
    with torch.no_grad():
        model.decoder.head.weight.add_(1.0)
        model.clip.model.visual.proj.add_(1.0)
    assert model.text_fingerprint() == before
    with torch.no_grad():
        model.clip.model.transformer.resblocks[0].attn.in_proj_weight[0, 0] += 1.0
    assert model.text_fingerprint() != before


def test_an_optimiser_step_changes_only_query_value_slices_and_the_head() -> None:
    torch.manual_seed(0)
    model = build_model("tiny").train()
    before = copy.deepcopy(model.state_dict())
    optimiser = torch.optim.AdamW(model.parameter_groups(lr=1e-2, weight_decay=1e-2))
    text = model.encode_text([["red star", "a red star"], ["blue ring", "a blue ring"], ["sky", "the sky"]])
    labels = torch.randint(0, 3, (2, 64, 64))
    output = model(images(), text, return_selection=True)
    loss = F.binary_cross_entropy_with_logits(output.logits, F.one_hot(labels, 3).permute(0, 3, 1, 2).float())
    loss.backward()
    optimiser.step()
    after = model.state_dict()

    qv_changed = 0
    for name, old in before.items():
        new = after[name]
        if name.startswith("sam."):
            assert torch.equal(old, new), f"frozen SAM weight {name} changed"
        elif name.startswith("clip.") and name.endswith(("in_proj_weight", "in_proj_bias")):
            width = old.shape[0] // 3
            assert torch.equal(old[width : 2 * width], new[width : 2 * width]), f"k slice of {name} changed"
            qv_changed += int(not torch.equal(old[:width], new[:width]))
            qv_changed += int(not torch.equal(old[2 * width :], new[2 * width :]))
        elif name.startswith("clip."):
            assert torch.equal(old, new), f"frozen CLIP weight {name} changed"
    # Both towers' q and v moved (3 vision + 2 text blocks, weight and bias, q and v).
    assert qv_changed == (3 + 2) * 2 * 2
    head_changed = [
        n for n in before if not n.startswith(("clip.", "sam.")) and not torch.equal(before[n], after[n])
    ]
    assert any(n.startswith("decoder.") for n in head_changed)
    assert any(n.startswith("fusion.") for n in head_changed)
    assert any(n.startswith("layers.") for n in head_changed)


def test_trainable_parameters_are_exactly_head_and_clip_query_value() -> None:
    model = build_model("tiny")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    clip = {n for n in trainable if n.startswith("clip.")}
    assert clip and all(n.endswith(("attn.in_proj_weight", "attn.in_proj_bias")) for n in clip)
    assert not any(n.startswith("sam.") for n in trainable)
    groups = model.parameter_groups(lr=2e-4, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["head", "clip_qv"]
    assert groups[1]["lr"] == pytest.approx(2e-6) and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def conv_stem_config():
    config = get_config("tiny")
    config.clip.conv_stem = (8, 16, 32)  # three stride-2 stages = the tiny preset's patch 8
    return config


def test_conv_stem_replaces_the_patch_projection_in_every_forward() -> None:
    torch.manual_seed(0)
    model = build_model(conv_stem_config()).eval()
    visual = model.clip.model.visual
    stem = visual.conv1
    assert stem.stride == 8 and [m.stride for m in stem if isinstance(m, torch.nn.Conv2d)] == [
        (2, 2), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1), (1, 1)
    ]
    x = images()
    normalised = (x - model.clip.mean) / model.clip.std
    with torch.no_grad():
        patches = stem(normalised)
        features = model.clip_features(x)
        visual.output_tokens = True
        try:
            _, tokens = visual(normalised)
        finally:
            visual.output_tokens = False
    assert patches.shape == (2, 64, 8, 8)  # B×width×(64 / 8)², as the patch projection it replaces
    assert features.dense.shape == (2, 32, 8, 8)
    expected = (tokens @ visual.proj).transpose(1, 2).reshape(2, 32, 8, 8)
    torch.testing.assert_close(features.dense, expected, atol=1e-5, rtol=1e-5)
    # The stem is part of the frozen CLIP: LSMSeg training tunes only q and v.
    assert not any(p.requires_grad for p in stem.parameters())
    # Different stem weights give different features: the stem is really on the path.
    with torch.no_grad():
        stem[0].weight.mul_(-1)
        assert not torch.allclose(model.clip_features(x).dense, features.dense)


def test_conv_stem_stride_must_equal_the_patch_size() -> None:
    config = get_config("tiny")
    with pytest.raises(ValueError, match="stride 4, not the patch size 8"):
        type(config.clip)(**{**vars(config.clip), "conv_stem": (8, 16)})
