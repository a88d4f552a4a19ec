"""Model configurations as data, and the registry of named presets.

A config is everything needed to rebuild the network's architecture; checkpoints store it as JSON in their
metadata, so a checkpoint never depends on this file's presets staying the same.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_PIXEL_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
SAM_PIXEL_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)

FUSION_MODES = ("weight", "mean", "concat", "none")
DENSE_MODES = ("standard", "catseg")
APPEARANCE_SOURCES = ("block", "dense")
CLASS_RESIDUALS = ("single", "catseg")


def _check_choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field_name} must be one of {choices}, got {value!r}")


@dataclass
class ClipConfig:
    """An open_clip `CLIP` (vision + text towers); `vision`/`text` are open_clip's own cfg fields."""

    embed_dim: int
    vision: dict[str, Any]  # CLIPVisionCfg fields without image_size (that is LSMSegConfig.image_size)
    text: dict[str, Any]  # CLIPTextCfg fields
    quick_gelu: bool
    # 0-based vision blocks whose outputs become E_1, E_2, E_3, in this order (any order; repeats allowed).
    guidance_layers: tuple[int, int, int]
    open_clip_name: str | None = None  # name in open_clip's model registry, for pretrained tags
    pretrained_tag: str | None = None  # open_clip tag the preset was designed for, e.g. "openai"
    tokenizer: str = "ViT-B-16"  # open_clip tokenizer name (all OpenAI CLIPs share one BPE vocabulary)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    # Channels of a convolutional stem in place of the patch projection, one stride-2 stage each (so
    # 2 ** len == patch_size); empty for the official architectures. See model/conv_stem.py.
    conv_stem: tuple[int, ...] = ()
    # "standard": dense features are the last block's patch tokens. "catseg": CAT-Seg's dense path, where the
    # last block skips attention (value projection only) and adds the block input's class token to each token.
    dense_mode: str = "standard"

    def __post_init__(self) -> None:
        _check_choice("dense_mode", self.dense_mode, DENSE_MODES)
        layers = int(self.vision["layers"])
        if len(self.guidance_layers) != 3 or not all(0 <= i < layers for i in self.guidance_layers):
            raise ValueError(
                f"guidance_layers must be three block indexes in [0, {layers}), got {self.guidance_layers}"
            )
        if self.conv_stem and 2 ** len(self.conv_stem) != self.patch_size:
            raise ValueError(
                f"a conv stem of {len(self.conv_stem)} stride-2 stages has stride "
                f"{2 ** len(self.conv_stem)}, not the patch size {self.patch_size}"
            )

    @property
    def width(self) -> int:
        return int(self.vision["width"])

    @property
    def patch_size(self) -> int:
        return int(self.vision["patch_size"])


@dataclass
class SamConfig:
    """A segment-anything `ImageEncoderViT`; only the blocks up to the last global one are run."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    patch_size: int = 16
    built_size: int = 1024  # img_size the encoder is constructed with (the official weights' grid)
    input_size: int = 1024  # side the image is resized to at run time; position embeddings follow
    registry_name: str | None = None  # segment_anything.sam_model_registry key of the official weights
    checkpoint_file: str | None = None  # official file name, for error messages
    checkpoint_url: str | None = None

    @property
    def feature_layers(self) -> tuple[int, int, int]:
        """The last three global-attention blocks (paper §3.5)."""
        if len(self.global_attn_indexes) < 3:
            raise ValueError("SAM config needs at least three global-attention blocks")
        first, second, third = self.global_attn_indexes[-3:]
        return first, second, third


@dataclass
class HeadConfig:
    """Fusion, refinement and decoder (CAT-Seg-style aggregator with LSMSeg's SAM fusion)."""

    fusion: str = "weight"  # one of FUSION_MODES; "none" builds no SAM encoder (ablation "w/o SAM")
    hidden_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    window_size: int = 12
    cost_kernel: int = 7
    guidance_dim: int = 128  # appearance (E_3) and text guidance channels
    decoder_dims: tuple[int, int] = (64, 32)
    decoder_guidance_dims: tuple[int, int] = (256, 128)  # E_2 at 2h×2w, E_1 at 4h×4w
    decoder_guidance_proj_dims: tuple[int, int] = (32, 16)
    spatial_refinement: bool = True
    class_refinement: bool = True
    # The flags below reproduce CAT-Seg's aggregator (model/catseg_import.py); the defaults are LSMSeg's head.
    appearance_source: str = "block"  # E_3 is CLIP block guidance_layers[2] ("block") or the dense features
    # Class attention always sees at least this many keys: identical learnable pad tokens fill up (0 = off).
    class_pad_len: int = 0
    class_residual: str = "single"  # "single": x + Δ; "catseg": x + up(pool(x) + Δ), i.e. 2x + Δ at pool 1
    class_pool: int = 1  # class attention over class_pool² average-pooled pixels (CAT-Seg trains at 2)
    class_out_proj: bool = True  # a Linear after merging the class-attention heads (CAT-Seg has none)
    # E = F_c + γ·(1−α)·(F_s − F_c) with a zero-initialised per-channel γ: fusion starts as the identity on
    # CLIP, so SAM can be added to a trained CLIP-only model without changing its outputs (γ = 1: eq. 6).
    fusion_gate: bool = False

    def __post_init__(self) -> None:
        _check_choice("fusion", self.fusion, FUSION_MODES)
        _check_choice("appearance_source", self.appearance_source, APPEARANCE_SOURCES)
        _check_choice("class_residual", self.class_residual, CLASS_RESIDUALS)
        if self.class_pad_len < 0:
            raise ValueError(f"class_pad_len must be 0 (off) or positive, got {self.class_pad_len}")
        if self.class_pool < 1 or (self.class_pool > 1 and self.class_residual != "catseg"):
            raise ValueError(
                f"class_pool {self.class_pool} needs class_residual 'catseg' (pool 1 works with either)"
            )
        if self.fusion_gate and self.fusion != "weight":
            raise ValueError(f"fusion_gate gates the weight generator's fusion, not fusion {self.fusion!r}")


@dataclass
class LSMSegConfig:
    name: str
    image_size: int  # CLIP input side
    clip: ClipConfig
    sam: SamConfig | None
    head: HeadConfig = field(default_factory=HeadConfig)
    prompts_per_class: int = 1  # P: prompts per class, channels of the cost map
    cfm_k: int = 32  # classes kept by the Category Filtering Module

    def __post_init__(self) -> None:
        if (self.sam is None) != (self.head.fusion == "none"):
            raise ValueError("a SAM config is needed exactly when fusion is not 'none'")
        if self.image_size % self.clip.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch {self.clip.patch_size}"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.clip.patch_size

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LSMSegConfig:
        raw = json.loads(text)
        clip = raw.pop("clip")
        clip["guidance_layers"] = tuple(clip["guidance_layers"])
        clip["mean"], clip["std"] = tuple(clip["mean"]), tuple(clip["std"])
        clip["conv_stem"] = tuple(clip.get("conv_stem", ()))  # absent in checkpoints written before it
        sam = raw.pop("sam")
        if sam is not None:
            sam["global_attn_indexes"] = tuple(sam["global_attn_indexes"])
        head = raw.pop("head")
        for key in ("decoder_dims", "decoder_guidance_dims", "decoder_guidance_proj_dims"):
            head[key] = tuple(head[key])
        return cls(
            clip=ClipConfig(**clip),
            sam=SamConfig(**sam) if sam is not None else None,
            head=HeadConfig(**head),
            **raw,
        )

    def replace(self, **changes: Any) -> LSMSegConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a published weights file comes from (the weights themselves never enter this repository)."""

    project: str  # "open_clip", "segment-anything" or "CAT-Seg"
    architecture: str  # open_clip model name, segment_anything registry key, or the release's config file
    tag: str | None = None  # open_clip pretrained tag
    file: str | None = None  # the official file name
    url: str | None = None  # where to download it


# The one table of weight provenance, apart from the architectures, as open_clip keeps _PRETRAINED.
PRETRAINED: dict[str, PretrainedWeights] = {
    "clip-vit-b16-openai": PretrainedWeights(
        project="open_clip", architecture="ViT-B-16-quickgelu", tag="openai"
    ),
    "clip-vit-l14-336-openai": PretrainedWeights(
        project="open_clip", architecture="ViT-L-14-336", tag="openai"
    ),
    "sam-vit-l": PretrainedWeights(
        project="segment-anything",
        architecture="vit_l",
        file="sam_vit_l_0b3195.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    ),
    # CAT-Seg (CVPR'24) releases: fine-tuned CLIP + aggregator, converted by `lsmseg-import catseg`.
    "catseg-vit-b16": PretrainedWeights(
        project="CAT-Seg",
        architecture="configs/vitb_384.yaml",
        file="model_base.pth",
        url="https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_base.pth",
    ),
    "catseg-vit-l14-336": PretrainedWeights(
        project="CAT-Seg",
        architecture="configs/vitl_336.yaml",
        file="model_large.pth",
        url="https://huggingface.co/spaces/hamacojr/CAT-Seg-weights/resolve/main/model_large.pth",
    ),
}


def _tiny_clip() -> ClipConfig:
    return ClipConfig(
        embed_dim=32,
        vision=dict(layers=3, width=64, head_width=32, patch_size=8),
        # The real BPE vocabulary (49408) so the real tokenizer works; the rest is small.
        text=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        quick_gelu=True,
        guidance_layers=(0, 1, 2),
    )


def _tiny_sam() -> SamConfig:
    return SamConfig(
        embed_dim=32,
        depth=8,
        num_heads=2,
        global_attn_indexes=(1, 3, 5, 7),
        window_size=4,
        patch_size=8,
        built_size=64,
        input_size=64,
    )


def _demo_clip() -> ClipConfig:
    # Trained from scratch on the synthetic scenes (training/pretrain.py). The token embedding keeps the real
    # 49408-word BPE vocabulary, so any class name tokenizes; at width 64 it is 3.2 M of the model's weights.
    # 48 tokens hold every synthetic description and caption; longer prompts are truncated, never rejected.
    # A convolutional stem instead of the 8×8 patch projection: without it the tower learns no shape in the
    # CPU budget (model/conv_stem.py).
    return ClipConfig(
        embed_dim=64,
        vision=dict(layers=6, width=128, head_width=32, patch_size=8),
        text=dict(context_length=48, vocab_size=49408, width=64, heads=4, layers=3),
        quick_gelu=False,
        guidance_layers=(1, 3, 5),
        conv_stem=(32, 64, 128),
    )


def _demo_sam() -> SamConfig:
    # A small ImageEncoderViT pretrained on class-agnostic segment targets, then frozen: the role SAM plays.
    return SamConfig(
        embed_dim=64,
        depth=6,
        num_heads=2,
        global_attn_indexes=(1, 3, 5),
        window_size=6,
        patch_size=8,
        built_size=96,
        input_size=96,
    )


def _open_clip_weights(key: str) -> dict[str, str | None]:
    weights = PRETRAINED[key]
    return dict(open_clip_name=weights.architecture, pretrained_tag=weights.tag)


# Same numbers as open_clip's model_configs JSON for these architectures; OpenAI weights use QuickGELU.
def _clip_vit_b16(guidance_layers: tuple[int, int, int], **changes: Any) -> ClipConfig:
    return ClipConfig(
        embed_dim=512,
        vision=dict(layers=12, width=768, patch_size=16),
        text=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
        quick_gelu=True,
        guidance_layers=guidance_layers,
        **{**_open_clip_weights("clip-vit-b16-openai"), **changes},
    )


def _clip_vit_l14_336(guidance_layers: tuple[int, int, int], **changes: Any) -> ClipConfig:
    return ClipConfig(
        embed_dim=768,
        vision=dict(layers=24, width=1024, patch_size=14),
        text=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12),
        quick_gelu=True,
        guidance_layers=guidance_layers,
        **{**_open_clip_weights("clip-vit-l14-336-openai"), **changes},
    )


def _sam_vit_l(input_size: int = 1024) -> SamConfig:
    weights = PRETRAINED["sam-vit-l"]
    return SamConfig(
        embed_dim=1024,
        depth=24,
        num_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
        window_size=14,
        input_size=input_size,
        registry_name=weights.architecture,
        checkpoint_file=weights.file,
        checkpoint_url=weights.url,
    )


def _catseg(name: str, image_size: int, clip: ClipConfig) -> LSMSegConfig:
    # CAT-Seg's aggregator as configs/vitb_384.yaml and vitl_336.yaml build it, at evaluation pooling [1, 1];
    # every class up to 256 is refined (its filter only acts beyond the pad length).
    head = HeadConfig(
        fusion="none",
        appearance_source="dense",
        class_pad_len=256,
        class_residual="catseg",
        class_out_proj=False,
    )
    return LSMSegConfig(
        name=name, image_size=image_size, clip=clip, sam=None, head=head, prompts_per_class=1, cfm_k=256
    )


PRESETS: dict[str, LSMSegConfig] = {
    # Random-init, seconds on a CPU: for tests. 64² input → 8×8 grid, two prompts per class.
    "tiny": LSMSegConfig(
        name="tiny",
        image_size=64,
        clip=_tiny_clip(),
        sam=_tiny_sam(),
        head=HeadConfig(
            hidden_dim=32,
            num_heads=2,
            window_size=4,
            cost_kernel=3,
            guidance_dim=32,
            decoder_dims=(16, 8),
            decoder_guidance_dims=(32, 16),
            decoder_guidance_proj_dims=(8, 4),
        ),
        prompts_per_class=2,
        cfm_k=8,
    ),
    # The shipped checkpoint (checkpoints/demo.safetensors): trained from scratch on the synthetic scenes by
    # `python -m lsmseg.training.demo`. 96² input → 12×12 grid; P = 5 (combined + size, shape, texture,
    # colour).
    "demo": LSMSegConfig(
        name="demo",
        image_size=96,
        clip=_demo_clip(),
        sam=_demo_sam(),
        head=HeadConfig(
            hidden_dim=32,
            num_heads=2,
            window_size=6,
            cost_kernel=3,
            guidance_dim=32,
            decoder_dims=(32, 16),
            decoder_guidance_dims=(64, 32),
            decoder_guidance_proj_dims=(16, 8),
        ),
        prompts_per_class=5,
        cfm_k=16,
    ),
    "vit-b16-sam-l": LSMSegConfig(
        name="vit-b16-sam-l",
        image_size=384,
        clip=_clip_vit_b16(guidance_layers=(3, 7, 11)),
        sam=_sam_vit_l(),
    ),
    "vit-l14-sam-l": LSMSegConfig(
        name="vit-l14-sam-l",
        image_size=336,
        clip=_clip_vit_l14_336(guidance_layers=(7, 15, 23)),
        sam=_sam_vit_l(),
    ),
    # CAT-Seg's released models, exactly (weights: PRETRAINED["catseg-*"] through `lsmseg-import catseg`, so
    # no open_clip tag). E_1 is the deeper tapped block (decoder stage at 4h×4w), E_2 the shallower (2h×2w).
    "catseg-vit-b16": _catseg(
        "catseg-vit-b16",
        image_size=384,
        clip=_clip_vit_b16(guidance_layers=(7, 3, 11), dense_mode="catseg", pretrained_tag=None),
    ),
    "catseg-vit-l14-336": _catseg(
        "catseg-vit-l14-336",
        image_size=336,
        clip=_clip_vit_l14_336(guidance_layers=(15, 7, 23), dense_mode="catseg", pretrained_tag=None),
    ),
}


def get_config(name: str) -> LSMSegConfig:
    """A private copy of a preset, so callers may change it freely."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
