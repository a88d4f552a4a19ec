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


@dataclass
class ClipConfig:
    """An open_clip `CLIP` (vision + text towers); `vision`/`text` are open_clip's own cfg fields."""

    embed_dim: int
    vision: dict[str, Any]  # CLIPVisionCfg fields without image_size (that is LSMSegConfig.image_size)
    text: dict[str, Any]  # CLIPTextCfg fields
    quick_gelu: bool
    guidance_layers: tuple[int, int, int]  # 0-based vision blocks whose outputs become E_1, E_2, E_3
    open_clip_name: str | None = None  # name in open_clip's model registry, for pretrained tags
    pretrained_tag: str | None = None  # open_clip tag the preset was designed for, e.g. "openai"
    tokenizer: str = "ViT-B-16"  # open_clip tokenizer name (all OpenAI CLIPs share one BPE vocabulary)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    # Channels of a convolutional stem in place of the patch projection, one stride-2 stage each (so
    # 2 ** len == patch_size); empty for the official architectures. See model/conv_stem.py.
    conv_stem: tuple[int, ...] = ()

    def __post_init__(self) -> None:
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

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")


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


def _openai_clip(
    open_clip_name: str,
    embed_dim: int,
    vision: dict[str, Any],
    text_width: int,
    text_heads: int,
    guidance_layers: tuple[int, int, int],
) -> ClipConfig:
    # Same numbers as open_clip's model_configs JSON for these architectures; OpenAI weights use QuickGELU.
    return ClipConfig(
        embed_dim=embed_dim,
        vision=vision,
        text=dict(context_length=77, vocab_size=49408, width=text_width, heads=text_heads, layers=12),
        quick_gelu=True,
        guidance_layers=guidance_layers,
        open_clip_name=open_clip_name,
        pretrained_tag="openai",
    )


def _sam_vit_l(input_size: int = 1024) -> SamConfig:
    return SamConfig(
        embed_dim=1024,
        depth=24,
        num_heads=16,
        global_attn_indexes=(5, 11, 17, 23),
        window_size=14,
        input_size=input_size,
        registry_name="vit_l",
        checkpoint_file="sam_vit_l_0b3195.pth",
        checkpoint_url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
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
    # `python -m training.demo`. 96² input → 12×12 grid; P = 5 (combined + size, shape, texture, colour).
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
        clip=_openai_clip(
            "ViT-B-16-quickgelu", 512, dict(layers=12, width=768, patch_size=16), 512, 8, (3, 7, 11)
        ),
        sam=_sam_vit_l(),
    ),
    "vit-l14-sam-l": LSMSegConfig(
        name="vit-l14-sam-l",
        image_size=336,
        clip=_openai_clip(
            "ViT-L-14-336", 768, dict(layers=24, width=1024, patch_size=14), 768, 12, (7, 15, 23)
        ),
        sam=_sam_vit_l(),
    ),
}


def get_config(name: str) -> LSMSegConfig:
    """A private copy of a preset, so callers may change it freely."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
