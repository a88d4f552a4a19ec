"""The LSMSeg network: wires CLIP, SAM, fusion, the CFM, refinement and the decoder together."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lsmseg.model.cfm import Selection, cost_volume, filter_classes
from lsmseg.model.clip_backbone import ClipBackbone, ClipFeatures
from lsmseg.model.config import LSMSegConfig
from lsmseg.model.decoder import GuidedDecoder
from lsmseg.model.fusion import Fusion
from lsmseg.model.refinement import RefinementLayer
from lsmseg.model.sam_backbone import SamBackbone

Guidance = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
TextInput = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class LSMSegOutput:
    logits: torch.Tensor  # B×K×H×W over the kept classes; -inf where padded
    indices: torch.Tensor  # B×K original class index of each kept class; -1 where padded
    mask: torch.Tensor  # B×K, False where padded

    def full_logits(self, num_classes: int) -> torch.Tensor:
        """B×C×H×W over the original class indices; classes the CFM dropped get -inf."""
        batch, _, height, width = self.logits.shape
        full = self.logits.new_full((batch, num_classes, height, width), float("-inf"))
        for index in range(batch):
            keep = self.mask[index]
            full[index, self.indices[index, keep]] = self.logits[index, keep]
        return full


class LSMSeg(nn.Module):
    def __init__(self, config: LSMSegConfig) -> None:
        super().__init__()
        self.config = config
        head = config.head
        width, embed_dim = config.clip.width, config.clip.embed_dim
        self.clip = ClipBackbone(config.clip, config.image_size)
        self.sam = SamBackbone(config.sam) if config.sam is not None else None
        # E_3 is at E channels when the appearance guidance comes from the dense features (CAT-Seg).
        appearance_dim = embed_dim if head.appearance_source == "dense" else width
        self.fusion = (
            Fusion(head.fusion, config.sam.embed_dim, (width, width, appearance_dim), gate=head.fusion_gate)
            if config.sam is not None
            else None
        )
        self.cost_embedding = nn.Conv2d(
            config.prompts_per_class,
            head.hidden_dim,
            kernel_size=head.cost_kernel,
            padding=head.cost_kernel // 2,
        )
        self.appearance_guidance = nn.Sequential(
            nn.Conv2d(appearance_dim, head.guidance_dim, kernel_size=3, padding=1), nn.ReLU()
        )
        self.text_guidance = nn.Sequential(nn.Linear(embed_dim, head.guidance_dim), nn.ReLU())
        self.layers = nn.ModuleList(
            RefinementLayer(
                head.hidden_dim,
                head.guidance_dim,
                head.num_heads,
                head.window_size,
                spatial=head.spatial_refinement,
                classes=head.class_refinement,
                class_pad_len=head.class_pad_len,
                class_residual=head.class_residual,
                class_pool=head.class_pool,
                class_out_proj=head.class_out_proj,
            )
            for _ in range(head.num_layers)
        )
        self.decoder = GuidedDecoder(
            head.hidden_dim,
            width,
            head.decoder_dims,
            head.decoder_guidance_dims,
            head.decoder_guidance_proj_dims,
        )

    # Text side ---------------------------------------------------------------------------------------------
    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        """C lists of exactly P prompts -> C×P×D, L2-normalised (truncated at the context length)."""
        if any(len(group) != self.config.prompts_per_class for group in prompts):
            raise ValueError(f"this model takes exactly {self.config.prompts_per_class} prompts per class")
        return self.clip.encode_text(prompts)

    def text_fingerprint(self) -> str:
        """Hash of the text tower's weights and config: equal fingerprints give equal text embeddings."""
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(self.config.clip), sort_keys=True).encode())
        for name, tensor in sorted(self.clip.text_state().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    # Image side --------------------------------------------------------------------------------------------
    def clip_features(self, images: torch.Tensor) -> ClipFeatures:
        return self.clip(images)

    def sam_features(self, images: torch.Tensor) -> Guidance | None:
        return self.sam(images) if self.sam is not None else None

    def fuse(self, clip_features: ClipFeatures, sam_features: Guidance | None) -> Guidance:
        """E_1, E_2, E_3 (paper eq. 6); without SAM the CLIP maps are used as they are. SAM's blocks pair with
        the levels in order (shallowest with E_1, the 4h×4w decoder stage), whichever CLIP block E_1 is."""
        first, second, third = clip_features.layers
        if self.config.head.appearance_source == "dense":
            third = clip_features.dense
        if self.fusion is None or sam_features is None:
            return first, second, third
        return self.fusion((first, second, third), sam_features)

    # Classes ------------------------------------------------------------------------------------------------
    def select(
        self,
        dense: torch.Tensor,
        text: TextInput,
        k: int | None = None,
        force: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> Selection:
        """CFM per sample. text: C×P×D shared by the batch, B×C×P×D, or a list of C_i×P×D."""
        texts = per_sample(text, dense.shape[0])
        forces = per_sample(force, dense.shape[0]) if force is not None else None
        return filter_classes(dense, texts, k or self.config.cfm_k, forces)

    def refine(
        self,
        dense: torch.Tensor,
        guidance: Guidance,
        selection: Selection,
        output_size: tuple[int, int],
        class_chunk: int | None = None,
    ) -> torch.Tensor:
        """Cost of the kept classes (eq. 5) -> refinement (eq. 7–8) -> decoder (eq. 9): B×K×H×W logits."""
        e1, e2, e3 = guidance
        cost = cost_volume(dense, selection.text.to(dense.dtype))  # B×K×P×h×w
        batch, classes = cost.shape[:2]
        x = self.cost_embedding(cost.flatten(0, 1)).unflatten(0, (batch, classes))
        x = x.permute(0, 1, 3, 4, 2)  # B×K×h×w×C
        appearance = self.appearance_guidance(e3).permute(0, 2, 3, 1)[:, None]
        text = F.normalize(selection.text.mean(dim=2), dim=-1).to(dense.dtype)
        text_guidance = self.text_guidance(text)
        for layer in self.layers:
            x = layer(x, appearance, text_guidance, selection.mask, class_chunk)
        logits = self.decoder(x.permute(0, 1, 4, 2, 3), e2, e1, class_chunk)
        logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits.masked_fill(~selection.mask[:, :, None, None], float("-inf"))

    def forward(
        self,
        images: torch.Tensor,
        text: TextInput,
        k: int | None = None,
        force: torch.Tensor | Sequence[torch.Tensor] | None = None,
        return_selection: bool = False,
    ) -> torch.Tensor | LSMSegOutput:
        """images B×3×H×W in [0, 1]. Returns B×C×H×W logits over the original classes (CFM-dropped ones at
        -inf), or, with return_selection, the compact LSMSegOutput (needed when vocabularies differ)."""
        clip_features = self.clip_features(images)
        guidance = self.fuse(clip_features, self.sam_features(images))
        selection = self.select(clip_features.dense, text, k, force)
        logits = self.refine(clip_features.dense, guidance, selection, tuple(images.shape[-2:]))
        output = LSMSegOutput(logits=logits, indices=selection.indices, mask=selection.mask)
        if return_selection:
            return output
        sizes = {t.shape[0] for t in per_sample(text, images.shape[0])}
        if len(sizes) != 1:
            raise ValueError("vocabularies of different sizes: call with return_selection=True")
        return output.full_logits(sizes.pop())

    # Training -----------------------------------------------------------------------------------------------
    def parameter_groups(
        self, lr: float, weight_decay: float, clip_lr_multiplier: float = 0.01
    ) -> list[dict[str, object]]:
        """Optimiser groups: the head, and CLIP's packed q/v projections at a lower rate.

        The CLIP group has no weight decay on purpose: decoupled decay would shrink the frozen k rows that
        share those tensors, even though their gradient is always zero.
        """
        clip_params = self.clip.query_value_parameters()
        clip_ids = {id(p) for p in clip_params}
        head_params = [p for p in self.parameters() if p.requires_grad and id(p) not in clip_ids]
        return [
            {"params": head_params, "lr": lr, "weight_decay": weight_decay, "name": "head"},
            {"params": clip_params, "lr": lr * clip_lr_multiplier, "weight_decay": 0.0, "name": "clip_qv"},
        ]


def per_sample(value: torch.Tensor | Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        shared_dims = 3 if value.dtype != torch.bool else 1
        if value.dim() == shared_dims:
            return [value] * batch
        value = list(value)
    if len(value) != batch:
        raise ValueError(f"got {len(value)} per-sample entries for a batch of {batch}")
    return list(value)
