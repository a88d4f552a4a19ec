"""Import a released CAT-Seg checkpoint (the CVPR'24 code's model_base.pth / model_large.pth) as LSMSeg.

CAT-Seg's network is LSMSeg without SAM plus the flags of the `catseg-*` presets, so importing only renames
and reshapes tensors: q/k/v packed into open_clip's in_proj_weight, the concatenated [features; guidance]
inputs of q and k split into our two projections, the 14×14 position table of ViT-B/16 resized as CAT-Seg
resizes it at run time (bicubic, no antialias). Anything that is not that network is refused with what was
found.

This lives in model/ because it is a checkpoint conversion: pure torch, no HTTP, no datasets.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lsmseg.model.build import WeightsNotFoundError
from lsmseg.model.checkpoint import save_checkpoint
from lsmseg.model.clip_backbone import resize_position_embedding
from lsmseg.model.config import PRETRAINED, LSMSegConfig, get_config
from lsmseg.model.lsmseg import LSMSeg
from lsmseg.model.refinement import shift_window_mask

logger = logging.getLogger(__name__)

CLIP = "sem_seg_head.predictor.clip_model."
AGGREGATOR = "sem_seg_head.predictor.transformer."
# The released models, by CLIP vision width (what the file does not record: tapped blocks, resolution).
VARIANTS = {768: "catseg-vit-b16", 1024: "catseg-vit-l14-336"}
_SWIN_MASK = re.compile(re.escape(AGGREGATOR) + r"layers\.(\d+)\.swin_block\.block_2\.attn_mask")
# Our key prefix -> CAT-Seg's, for tensors that are copied as they are.
_RENAMES = {
    "cost_embedding.": AGGREGATOR + "conv1.",
    "appearance_guidance.0.": AGGREGATOR + "guidance_projection.0.",
    "text_guidance.0.": AGGREGATOR + "text_guidance_projection.0.",
    "decoder.guidance_2.0.": "upsample1.",  # the shallower tapped block, ×2
    "decoder.guidance_1.0.": "upsample2.",  # the deeper tapped block, ×4
    "decoder.guidance_2.1.": AGGREGATOR + "decoder_guidance_projection.0.0.",
    "decoder.guidance_1.1.": AGGREGATOR + "decoder_guidance_projection.1.0.",
    "decoder.up_1.up.": AGGREGATOR + "decoder1.up.",
    "decoder.up_1.conv.": AGGREGATOR + "decoder1.conv.double_conv.",
    "decoder.up_2.up.": AGGREGATOR + "decoder2.up.",
    "decoder.up_2.conv.": AGGREGATOR + "decoder2.conv.double_conv.",
    "decoder.head.": AGGREGATOR + "head.",
}
# Sub-modules of our SpatialBlock / ClassRefinement -> CAT-Seg's Swin block / ClassTransformerLayer.
_SPATIAL_PARTS = {
    "norm": "norm1",
    "value": "attn.v",
    "out": "attn.proj",
    "mlp_norm": "norm2",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
_CLASS_PARTS = {
    "norm": "norm1",
    "value": "attention.v",
    "mlp_norm": "norm2",
    "mlp.0": "MLP.0",
    "mlp.2": "MLP.2",
}
_PADDING = {"padding_token": "padding_tokens", "padding_guidance": "padding_guidance"}


class CatSegImportError(ValueError):
    """The file is not a CVPR-version CAT-Seg checkpoint; the message says what was found instead."""


@dataclass(frozen=True)
class _Source:
    """The CAT-Seg tensors one of our tensors is made from, and how."""

    keys: tuple[str, ...]
    combine: Callable[..., torch.Tensor] = lambda tensor: tensor


def _examples(keys: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(keys[:count])
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > count else shown


def read_catseg_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a CAT-Seg file ({"model": state_dict} as detectron2 saves it, or the bare dict)."""
    path = Path(path)
    if not path.is_file():
        base, large = PRETRAINED["catseg-vit-b16"], PRETRAINED["catseg-vit-l14-336"]
        raise WeightsNotFoundError(
            f"CAT-Seg checkpoint {str(path)!r} does not exist. The released files are {base.file} "
            f"(ViT-B/16) from {base.url} and {large.file} (ViT-L/14@336) from {large.url}.",
            "catseg",
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError… for foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CatSegImportError(
            f"{path} is not a torch checkpoint that loads without running code: {reason}"
        ) from error
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not state:
        raise CatSegImportError(f"{path} holds a {type(raw).__name__}, not a CAT-Seg state dict")
    not_tensors = sorted(str(key) for key, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CatSegImportError(
            f"{path} is not a state dict of tensors: {_examples(not_tensors)} are not tensors "
            f"(top-level keys: {_examples(sorted(map(str, raw)))})"
        )
    return state


def check_release(state: Mapping[str, torch.Tensor]) -> None:
    """Refuse what is not CAT-Seg's CVPR'24 network: the older release, other models, P ≠ 1."""
    backbone = sorted(key for key in state if key.startswith("backbone."))
    if backbone:
        raise CatSegImportError(
            f"this is the older CAT-Seg release (a separate backbone: {len(backbone)} backbone.* tensors, "
            f"e.g. {backbone[0]}); only the CVPR'24 release (model_base.pth / model_large.pth, CLIP only) "
            f"can be imported"
        )
    if CLIP + "visual.conv1.weight" not in state:
        raise CatSegImportError(
            f"not a CAT-Seg checkpoint: no {CLIP}visual.conv1.weight among its {len(state)} tensors "
            f"({_examples(sorted(state))})"
        )
    if AGGREGATOR + "layers.0.attention.padding_tokens" not in state:
        raise CatSegImportError(
            f"no class-attention padding tokens ({AGGREGATOR}layers.*.attention.padding_tokens): not the "
            f"CVPR'24 CAT-Seg code's checkpoint, which always has them"
        )
    prompts = state[AGGREGATOR + "conv1.weight"].shape[1] if AGGREGATOR + "conv1.weight" in state else None
    if prompts != 1:
        raise CatSegImportError(
            f"the cost embedding takes {prompts} prompt channels (P); the released models use one "
            f"(PROMPT_ENSEMBLE_TYPE single) and only P = 1 can be imported"
        )


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    indexes = {int(match[1]) for key in state if (match := re.fullmatch(pattern, key))}
    if indexes != set(range(len(indexes))):
        raise CatSegImportError(f"blocks matching {pattern} are not numbered 0…n-1: {sorted(indexes)}")
    return len(indexes)


def _shape(state: Mapping[str, torch.Tensor], key: str) -> torch.Size:
    if key not in state:
        raise CatSegImportError(f"missing CAT-Seg tensor {key}")
    return state[key].shape


def catseg_config(
    state: Mapping[str, torch.Tensor], variant: str | LSMSegConfig | None = None
) -> LSMSegConfig:
    """The LSMSeg config of a CAT-Seg state dict: dimensions from the shapes; tapped blocks, resolution, head
    count and pad length (which the file does not record) from `variant`, chosen by CLIP width when None."""
    width, _, _, patch = _shape(state, CLIP + "visual.conv1.weight")
    if variant is None:
        if width not in VARIANTS:
            raise CatSegImportError(
                f"CLIP vision width {width} is neither ViT-B/16 (768) nor ViT-L/14 (1024), the released "
                f"CAT-Seg models; pass the variant (a catseg-* preset) explicitly"
            )
        variant = VARIANTS[width]
    base = get_config(variant) if isinstance(variant, str) else variant
    blocks = r"transformer\.resblocks\.(\d+)\.attn\.q_proj_weight"
    text_width = _shape(state, CLIP + "ln_final.weight")[0]
    text_head_width = base.clip.text["width"] // base.clip.text["heads"]
    hidden, _, _, cost_kernel = _shape(state, AGGREGATOR + "conv1.weight")
    guidance_dim = _shape(state, AGGREGATOR + "guidance_projection.0.weight")[0]
    text_guidance_dim = _shape(state, AGGREGATOR + "text_guidance_projection.0.weight")[0]
    if text_guidance_dim != guidance_dim:
        raise CatSegImportError(
            f"appearance guidance has {guidance_dim} channels but text guidance {text_guidance_dim}; "
            f"LSMSeg's head uses one guidance width"
        )
    mask_shape = _shape(state, AGGREGATOR + "layers.0.swin_block.block_2.attn_mask")
    window = math.isqrt(mask_shape[1])
    clip = replace(
        base.clip,
        embed_dim=_shape(state, CLIP + "visual.proj")[1],
        vision={
            **base.clip.vision,
            "layers": _count(state, re.escape(CLIP) + "visual." + blocks),
            "width": width,
            "patch_size": patch,
        },
        text={
            **base.clip.text,
            "context_length": _shape(state, CLIP + "positional_embedding")[0],
            "vocab_size": _shape(state, CLIP + "token_embedding.weight")[0],
            "width": text_width,
            "heads": text_width // text_head_width,
            "layers": _count(state, re.escape(CLIP) + blocks),
        },
    )
    head = replace(
        base.head,
        hidden_dim=hidden,
        num_layers=_count(state, re.escape(AGGREGATOR) + r"layers\.(\d+)\.attention\.padding_tokens"),
        window_size=window,
        cost_kernel=cost_kernel,
        guidance_dim=guidance_dim,
        decoder_dims=tuple(
            _shape(state, f"{AGGREGATOR}decoder{stage}.conv.double_conv.0.weight")[0] for stage in (1, 2)
        ),
        decoder_guidance_dims=tuple(_shape(state, f"upsample{stage}.weight")[1] for stage in (1, 2)),
        decoder_guidance_proj_dims=tuple(
            _shape(state, f"{AGGREGATOR}decoder_guidance_projection.{stage}.0.weight")[0] for stage in (0, 1)
        ),
    )
    try:
        config = base.replace(clip=clip, head=head, prompts_per_class=1)
    except ValueError as error:
        raise CatSegImportError(f"the file does not fit variant {base.name!r}: {error}") from error
    if window * math.isqrt(mask_shape[0]) != config.grid_size:
        raise CatSegImportError(
            f"the Swin mask {tuple(mask_shape)} is for a {window * math.isqrt(mask_shape[0])}² feature grid, "
            f"but variant {base.name!r} runs CLIP at {config.image_size}² = {config.grid_size}² patches"
        )
    return config


def _attention_part(base: str, attention: str, part: str, parts: Mapping[str, str], hidden: int) -> _Source:
    """A SpatialBlock / ClassRefinement tensor from CAT-Seg's block whose keys start with `base`."""
    module, _, param = part.rpartition(".")
    if module in ("query", "key", "query_guidance", "key_guidance"):
        source = f"{base}{attention}{module[0]}.{param}"  # CAT-Seg's q / k see cat([features, guidance])
        if param == "bias":
            return _Source((source,))
        columns = slice(None, hidden) if module in ("query", "key") else slice(hidden, None)
        return _Source((source,), lambda weight: weight[:, columns])
    return _Source((f"{base}{parts[module]}.{param}",))


def _source(target: str, hidden: int, grid: int) -> _Source:
    """Which CAT-Seg tensors make our tensor `target`."""
    if match := re.fullmatch(r"clip\.model\.(.+)\.attn\.in_proj_weight", target):
        prefix = f"{CLIP}{match[1]}.attn."
        return _Source(
            tuple(f"{prefix}{name}_proj_weight" for name in "qkv"), lambda q, k, v: torch.cat([q, k, v])
        )
    if target == "clip.model.visual.positional_embedding":
        return _Source(
            (CLIP + "visual.positional_embedding",), lambda pos: resize_position_embedding(pos, grid, grid)
        )
    if target.startswith("clip.model."):
        return _Source((CLIP + target.removeprefix("clip.model."),))
    if match := re.fullmatch(r"layers\.(\d+)\.spatial\.blocks\.(\d+)\.(.+)", target):
        wrapper = f"{AGGREGATOR}layers.{match[1]}.swin_block."
        if match[3].startswith("guidance_norm."):  # CAT-Seg has one per block pair: both of ours copy it
            return _Source((wrapper + match[3],))
        return _attention_part(
            f"{wrapper}block_{int(match[2]) + 1}.", "attn.", match[3], _SPATIAL_PARTS, hidden
        )
    if match := re.fullmatch(r"layers\.(\d+)\.classes\.(.+)", target):
        base = f"{AGGREGATOR}layers.{match[1]}.attention."
        if match[2] in _PADDING:
            return _Source((base + _PADDING[match[2]],), lambda pad: pad.reshape(-1))
        return _attention_part(base, "attention.", match[2], _CLASS_PARTS, hidden)
    for ours, theirs in _RENAMES.items():
        if target.startswith(ours):
            return _Source((theirs + target.removeprefix(ours),))
    raise CatSegImportError(f"no CAT-Seg counterpart for {target}: the config is not a catseg-* one")


def _check_swin_masks(state: Mapping[str, torch.Tensor], config: LSMSegConfig) -> list[str]:
    """CAT-Seg saves its shifted-window mask (−100 where attention is cut); ours is rebuilt, so the file's
    must be the one our window and shift give. Returns the mask keys (they have no tensor of ours)."""
    window, grid = config.head.window_size, config.grid_size
    ours = shift_window_mask(grid, grid, window, window // 2, torch.device("cpu"))[:, 0]
    expected = torch.where(ours, 0.0, -100.0)
    keys = sorted(key for key in state if _SWIN_MASK.fullmatch(key))
    for key in keys:
        if state[key].shape != expected.shape or not torch.equal(state[key].float(), expected):
            raise CatSegImportError(
                f"{key} is not the shifted-window mask of window {window}, shift {window // 2} on a "
                f"{grid}² grid"
            )
    return keys


def convert_catseg_state(
    state: Mapping[str, torch.Tensor], config: LSMSegConfig, targets: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """CAT-Seg's tensors as LSMSeg's state dict (`targets`: the model's, for names and shapes). Every CAT-Seg
    tensor must be used and every one of ours made, with our shape."""
    sources = {target: _source(target, config.head.hidden_dim, config.grid_size) for target in targets}
    needed = {key for source in sources.values() for key in source.keys}
    masks = _check_swin_masks(state, config)
    missing = sorted(needed - state.keys())
    if missing:
        raise CatSegImportError(f"missing {len(missing)} CAT-Seg tensors: {_examples(missing)}")
    unknown = sorted(state.keys() - needed - set(masks))
    if unknown:
        raise CatSegImportError(
            f"{len(unknown)} tensors that CAT-Seg's CVPR'24 network does not have: {_examples(unknown)}"
        )
    converted, wrong = {}, []
    for target, source in sources.items():
        tensor = source.combine(*(state[key].float() for key in source.keys))
        if tensor.shape != targets[target].shape:
            wrong.append(
                f"{source.keys[0]} {tuple(state[source.keys[0]].shape)} (→ {target} wants "
                f"{tuple(targets[target].shape)})"
            )
        converted[target] = tensor.contiguous()
    if wrong:
        raise CatSegImportError(f"{len(wrong)} tensors have unexpected shapes: {_examples(wrong, 3)}")
    return converted


def import_catseg(path: str | Path, variant: str | LSMSegConfig | None = None) -> LSMSeg:
    """A released CAT-Seg checkpoint as an LSMSeg model (eval mode), loaded strictly."""
    state = read_catseg_state(path)
    check_release(state)
    config = catseg_config(state, variant)
    dtypes = sorted({str(tensor.dtype).removeprefix("torch.") for tensor in state.values()})
    logger.info(
        "%s: CAT-Seg CVPR'24 layout, %d tensors (%s); CLIP width %d, %d blocks, taps %s -> %s",
        path,
        len(state),
        "/".join(dtypes),
        config.clip.width,
        config.clip.vision["layers"],
        config.clip.guidance_layers,
        config.name,
    )
    model = LSMSeg(config)
    model.load_state_dict(convert_catseg_state(state, config, model.state_dict()), strict=True)
    return model.eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CATSEG_DOMAIN = "real photos (CAT-Seg, trained on COCO-Stuff's 171 classes; open-vocabulary)"


def write_catseg_checkpoint(
    source: str | Path, output: str | Path, variant: str | LSMSegConfig | None = None
) -> Path:
    """Import `source` and save it as an LSMSeg checkpoint that serves as it is (prompt mode "catseg")."""
    source = Path(source)
    model = import_catseg(source, variant)
    extra = {"imported_from": "CAT-Seg", "source_file": source.name, "source_sha256": _sha256(source)}
    return save_checkpoint(model, output, extra=extra, prompt_mode="catseg", domain=CATSEG_DOMAIN)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lsmseg-import",
        description="Convert another project's released weights to an LSMSeg checkpoint.",
    )
    formats = parser.add_subparsers(dest="format", required=True)
    catseg = formats.add_parser("catseg", help="a CAT-Seg (CVPR'24) model_base.pth / model_large.pth")
    catseg.add_argument("source", type=Path, help="the CAT-Seg .pth file")
    catseg.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    catseg.add_argument(
        "--variant", choices=sorted(set(VARIANTS.values())), help="default: chosen by the CLIP width"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = write_catseg_checkpoint(args.source, args.output, args.variant)
    except (CatSegImportError, WeightsNotFoundError) as error:
        print(f"lsmseg-import: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    size_mb = path.stat().st_size / 2**20
    print(f"wrote {path} ({size_mb:.0f} MiB, prompt mode catseg); serve it with LSMSEG_CHECKPOINT={path}")


if __name__ == "__main__":
    main()
