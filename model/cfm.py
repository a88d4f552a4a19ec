"""Category Filtering Module (paper §3.4, eq. 1–5): keep the k classes that respond most in the image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Cosine scores lie in [-1, 1]: this lifts every forced class above all others and keeps their order.
_FORCE_BONUS = 4.0


def cost_volume(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine cost (eq. 1). dense B×D×h×w; text C×P×D (shared) or B×C×P×D -> B×C×P×h×w."""
    dense = F.normalize(dense, dim=1)
    text = F.normalize(text, dim=-1)
    if text.dim() == 3:
        return torch.einsum("bdhw,cpd->bcphw", dense, text)
    return torch.einsum("bdhw,bcpd->bcphw", dense, text)


def select_categories(cost: torch.Tensor, k: int, force: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the kept classes, B×min(k, C), ascending (eq. 2–3).

    A = max of the cost over prompts and space; the top-k of A are kept. When C ≤ k every class is kept.
    `force` (B×C bool, for training) guarantees the marked classes a slot; the rest are filled by score.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    batch, num_classes = cost.shape[:2]
    if num_classes <= k:
        return torch.arange(num_classes, device=cost.device).expand(batch, num_classes)
    scores = cost.flatten(2).amax(dim=2)
    if force is not None:
        scores = torch.where(force, scores + _FORCE_BONUS, scores)
    return scores.topk(k, dim=1).indices.sort(dim=1).values


@dataclass
class Selection:
    """The classes each sample keeps, padded to a common K when samples have different vocabularies."""

    indices: torch.Tensor  # B×K original class indices, -1 where padded
    text: torch.Tensor  # B×K×P×D gathered, re-normalised text embeddings (eq. 4); zeros where padded
    mask: torch.Tensor  # B×K bool, False where padded


def filter_classes(
    dense: torch.Tensor, texts: list[torch.Tensor], k: int, forces: list[torch.Tensor] | None = None
) -> Selection:
    """Run the CFM per sample (each may have its own C_i×P×D vocabulary) and gather the kept embeddings."""
    picked = []
    for index, text in enumerate(texts):
        cost = cost_volume(dense[index : index + 1], text)
        force = forces[index][None] if forces is not None else None
        picked.append(select_categories(cost, k, force)[0])
    width = max(len(p) for p in picked)
    batch = len(texts)
    prompts, dim = texts[0].shape[1:]
    indices = torch.full((batch, width), -1, dtype=torch.long, device=dense.device)
    gathered = dense.new_zeros(batch, width, prompts, dim)
    mask = torch.zeros(batch, width, dtype=torch.bool, device=dense.device)
    for index, (text, kept) in enumerate(zip(texts, picked, strict=True)):
        indices[index, : len(kept)] = kept
        gathered[index, : len(kept)] = F.normalize(text[kept], dim=-1).to(gathered.dtype)
        mask[index, : len(kept)] = True
    return Selection(indices=indices, text=gathered, mask=mask)
