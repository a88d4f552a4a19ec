"""build_model: preset or config -> LSMSeg; CLIP and SAM weights from local files or open_clip's cache."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import open_clip
import torch

from lsmseg.model.config import LSMSegConfig, SamConfig, get_config
from lsmseg.model.lsmseg import LSMSeg

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are missing; the message names the file and where to get it, and `part` which
    weights they are ("checkpoint", "clip", "sam", "catseg"), so that an application can name its own
    setting for them."""

    def __init__(self, message: str, part: str) -> None:
        super().__init__(message)
        self.part = part


def build_model(
    preset_or_config: str | LSMSegConfig,
    *,
    clip_pretrained: str | Path | None = None,
    sam_checkpoint: str | Path | None = None,
) -> LSMSeg:
    """Build LSMSeg. Without weights the backbones are randomly initialised (for tests only).

    clip_pretrained: a local weights file, or an open_clip tag such as "openai" (taken from open_clip's cache,
    downloaded there when the machine can reach the hub). sam_checkpoint: the official SAM `.pth`.
    """
    config = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    model = LSMSeg(config)
    if clip_pretrained is not None:
        load_clip_weights(model, clip_pretrained)
    elif config.clip.pretrained_tag is not None:
        logger.warning(
            "CLIP of %s is randomly initialised: pass clip_pretrained for real features", config.name
        )
    if sam_checkpoint is not None:
        load_sam_weights(model, sam_checkpoint)
    else:
        _warn_if_sam_is_random(config)
    return model


def _warn_if_sam_is_random(config: LSMSegConfig) -> None:
    if config.sam is not None and config.sam.checkpoint_file is not None:
        logger.warning(
            "SAM of %s is randomly initialised: pass sam_checkpoint (%s)",
            config.name,
            config.sam.checkpoint_file,
        )


def clip_weights_file(source: str | Path) -> Path | None:
    """What a CLIP weights source is: the local file it names, or None for an open_clip tag such as
    "openai" (no "/" and no weights suffix). WeightsNotFoundError for a path to a file that is not there."""
    if Path(source).is_file():
        return Path(source)
    text = str(source)
    if "/" in text or text.endswith(_WEIGHT_SUFFIXES):
        raise WeightsNotFoundError(
            f"CLIP weights file {text!r} does not exist. It should hold an open_clip state dict; or pass "
            "an open_clip tag such as 'openai' instead.",
            "clip",
        )
    return None


def _clip_weights_path(config: LSMSegConfig, source: str | Path) -> str:
    """The local weights file for `source`, fetched through open_clip's cache when it is a tag."""
    clip = config.clip
    file = clip_weights_file(source)
    if file is not None:
        return str(file)
    source = str(source)
    if clip.open_clip_name is None:
        raise WeightsNotFoundError(
            f"preset {config.name!r} has no open_clip architecture; pass a weights file", "clip"
        )
    pretrained_cfg = open_clip.pretrained.get_pretrained_cfg(clip.open_clip_name, source)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(clip.open_clip_name)
        raise WeightsNotFoundError(
            f"open_clip has no tag {source!r} for {clip.open_clip_name}; known: {tags}", "clip"
        )
    try:
        return open_clip.pretrained.download_pretrained(pretrained_cfg)
    except Exception as error:  # the hub client raises many types when offline
        hub = pretrained_cfg.get("hf_hub", "").rstrip("/")
        raise WeightsNotFoundError(
            f"CLIP weights {clip.open_clip_name}/{source} are not in open_clip's cache and could not be "
            f"downloaded ({type(error).__name__}). On a machine with internet run "
            f"`python -c \"import open_clip; "
            f"open_clip.create_model('{clip.open_clip_name}', pretrained='{source}')\"` "
            f"(fills ~/.cache/huggingface) or download the weights from https://huggingface.co/{hub} "
            f"and pass the file's path.",
            "clip",
        ) from error


def load_clip_weights(model: LSMSeg, source: str | Path) -> None:
    """Load open_clip weights (resizing the position embeddings to the model's input size)."""
    path = _clip_weights_path(model.config, source)
    open_clip.load_checkpoint(model.clip.model, path, strict=True, weights_only=True)
    logger.info("loaded CLIP weights from %s", path)


def sam_missing_message(config: SamConfig) -> str:
    """Where to get a SAM encoder's weights file, and how to pass it."""
    file = config.checkpoint_file or "the weights file"
    where = f"Download {file} from {config.checkpoint_url}" if config.checkpoint_url else f"Get {file}"
    return (
        f"{where} (the official segment-anything '{config.registry_name or 'custom'}' weights) and pass its "
        "path as sam_checkpoint."
    )


def load_sam_weights(model: LSMSeg, path: str | Path) -> None:
    """Load the image encoder from an official SAM `.pth` (never unpickles arbitrary objects)."""
    if model.sam is None:
        raise ValueError(f"preset {model.config.name!r} has no SAM encoder")
    if not Path(path).is_file():
        message = f"SAM checkpoint {str(path)!r} does not exist. {sam_missing_message(model.sam.config)}"
        raise WeightsNotFoundError(message, "sam")
    state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    encoder_state = {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix) and not key.startswith(prefix + "neck.")
    }
    wanted = model.sam.encoder.state_dict()
    encoder_state = {key: value for key, value in encoder_state.items() if key in wanted}
    model.sam.encoder.load_state_dict(encoder_state, strict=True)
    logger.info("loaded SAM image encoder from %s", path)


def add_sam(
    model: LSMSeg, sam: SamConfig, fusion: str = "weight", sam_checkpoint: str | Path | None = None
) -> LSMSeg:
    """A CLIP-only model (fusion "none", e.g. an imported CAT-Seg) with a frozen SAM encoder and the fusion
    added, every other weight kept. With "weight" the fusion is zero-gated (HeadConfig.fusion_gate), so the
    new model's outputs equal the old one's until training moves the gate; "mean" / "concat" change them."""
    if model.sam is not None:
        raise ValueError(f"{model.config.name!r} already has a SAM encoder")
    if fusion == "none":
        raise ValueError("adding SAM needs a fusion other than 'none'")
    head = dataclasses.replace(model.config.head, fusion=fusion, fusion_gate=fusion == "weight")
    config = model.config.replace(name=f"{model.config.name}+sam", sam=sam, head=head)
    extended = LSMSeg(config)
    missing, unexpected = extended.load_state_dict(model.state_dict(), strict=False)
    new_parts = [key for key in missing if not key.startswith(("sam.", "fusion."))]
    if unexpected or new_parts:  # only SAM and the fusion may be new
        raise ValueError(f"weights that do not carry over: unexpected {unexpected}, missing {new_parts}")
    if sam_checkpoint is not None:
        load_sam_weights(extended, sam_checkpoint)
    else:
        _warn_if_sam_is_random(config)
    return extended.train(model.training)
