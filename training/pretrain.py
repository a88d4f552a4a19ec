"""Tiny backbone pretraining for the demo model, standing in for the web-scale CLIP and SA-1B SAM weights.

CLIP (`ClipPretrainer`): an open_clip `CLIP` trained from scratch on captioned synthetic scenes and
single-object pictures drawn from all 58 classes (real CLIP saw web data covering most concepts, so the unseen
classes are in its pretraining too). Its text is image-level only: a global image–caption InfoNCE, plus dense
terms that tie patches to the classes the caption names. Those use class-agnostic segment maps (which pixels
belong together, not what they are: what SAM-style masks give) for multiple-instance learning over segments:
each segment shows one of the caption's classes, each named class is shown by some segment, and every patch
learns the class its segment is matched to. It never sees a class label for a pixel.

SAM (`SamPretrainer`): a segment-anything `ImageEncoderViT` trained on class-agnostic targets (which pixels
are segment boundaries, and which patches lie in the same segment) with a small throwaway head, then frozen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn
from tqdm import tqdm

from lsmseg.model.clip_backbone import build_open_clip
from lsmseg.model.config import ClipConfig, SamConfig
from lsmseg.model.sam_backbone import SamBackbone
from lsmseg.prompt_cache.prompts import TEMPLATES
from lsmseg.training.datasets.synthetic import (
    CLASSES,
    ObjectCaptions,
    Scene,
    SyntheticScenes,
    describe,
    instance_boundaries,
    scene_caption,
)
from lsmseg.training.schedule import warmup_cosine

# Scenes for pretraining come from the all-classes generator ("test" mode) under their own seed, so they never
# share an image with the evaluation split (seed 0). 0.2 makes unseen classes about as frequent as seen ones.
PRETRAIN_SCENE_SEED = 1001
PRETRAIN_UNSEEN_FRACTION = 0.2


# Data ------------------------------------------------------------------------------------------------------
@dataclass
class SceneBank:
    """Pre-rendered scenes: images, their class-agnostic segment maps and what each segment is."""

    images: torch.Tensor  # N×3×S×S uint8
    segments: torch.Tensor  # N×S×S uint8 segment ids ≥ 1 (see `Scene`)
    scenes: list[Scene]
    segment_classes: list[torch.Tensor]  # per image: class index (into `classes`) of segment id k at k - 1
    classes: list[str]

    def __len__(self) -> int:
        return len(self.scenes)


def render_scene_bank(
    num_scenes: int,
    image_size: int,
    num_objects: int = 0,
    seed: int = PRETRAIN_SCENE_SEED,
    unseen_fraction: float = PRETRAIN_UNSEEN_FRACTION,
    max_objects: int = 6,
    progress: bool = True,
) -> SceneBank:
    """Render once what pretraining samples crops from: `num_scenes` scenes of all classes and
    `num_objects` single-object pictures (`ObjectCaptions`: one large object, the easy case of a concept)."""
    scenes = SyntheticScenes(
        "test",
        num_images=num_scenes,
        image_size=image_size,
        seed=seed,
        unseen_fraction=unseen_fraction,
        max_objects=max_objects,
    )
    objects = ObjectCaptions(num_images=num_objects, image_size=image_size, seed=seed)
    items = [*(scenes[i] for i in range(num_scenes)), *(objects[i] for i in range(num_objects))]
    total = num_scenes + num_objects
    index = {name: i for i, name in enumerate(CLASSES)}
    images = torch.empty((total, 3, image_size, image_size), dtype=torch.uint8)
    segments = torch.empty((total, image_size, image_size), dtype=torch.uint8)
    kept, segment_classes = [], []
    for i, item in enumerate(tqdm(items, total=total, desc="render", unit="img", disable=not progress)):
        images[i] = torch.from_numpy(item.image).permute(2, 0, 1)
        segments[i] = torch.from_numpy(item.instances.astype(np.uint8))
        kept.append(item.scene)
        segment_classes.append(torch.tensor([index[name] for name in item.scene.segment_names]))
    return SceneBank(images, segments, kept, segment_classes, list(CLASSES))


def patch_segments(segments: torch.Tensor, patch: int) -> torch.Tensor:
    """B×S×S segment ids -> B×g² id covering most of each patch."""
    tiles = segments.unfold(1, patch, patch).unfold(2, patch, patch).flatten(3)  # B×g×g×patch²
    return tiles.mode(dim=-1).values.flatten(1)


@dataclass
class CropBatch:
    images: torch.Tensor  # B×3×s×s float in [0, 1]
    segments: torch.Tensor  # B×s×s int64
    patch_ids: torch.Tensor  # B×N int64: the segment covering most of each patch
    captions: list[str]  # what each crop shows, written like the generator's captions
    present: torch.Tensor  # B×C bool: the classes its caption names
    grid_offset: tuple[int, int]  # patch row, column of the crop's top-left corner in the full image


def sample_crops(
    bank: SceneBank, indices: torch.Tensor, crop: int, patch: int, generator: torch.Generator
) -> CropBatch:
    """One patch-aligned crop position for the batch, a random flip per image; captions name the segments
    that cover most of some patch (what the model can see at its resolution)."""
    size = bank.images.shape[-1]
    cells = (size - crop) // patch + 1
    top, left = (int(v) * patch for v in torch.randint(cells, (2,), generator=generator))
    images = bank.images[indices, :, top : top + crop, left : left + crop].float() / 255
    segments = bank.segments[indices, top : top + crop, left : left + crop].long()
    flip = torch.rand(len(indices), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    segments = torch.where(flip[:, None, None], segments.flip(-1), segments)
    patch_ids = patch_segments(segments, patch)
    present = torch.zeros(len(indices), len(bank.classes), dtype=torch.bool)
    captions = []
    for row, image_index in enumerate(indices.tolist()):
        scene, lookup = bank.scenes[image_index], bank.segment_classes[image_index]
        captions.append(scene_caption(scene, patch_ids[row].numpy(), min_pixels=1))
        counts = torch.bincount(patch_ids[row], minlength=len(scene.segment_names) + 1)[1:]
        present[row, lookup[counts > 0]] = True
    return CropBatch(images, segments, patch_ids, captions, present, (top // patch, left // patch))


def segment_log_probs(log_probs: torch.Tensor, patch_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch class log-probabilities B×N×C -> each segment's mean B×S×C and its patch count B×S
    (S = the largest segment id + 1; segments without patches have count 0 and mean 0)."""
    members = F.one_hot(patch_ids, int(patch_ids.max()) + 1).to(log_probs.dtype)  # B×N×S
    counts = members.sum(dim=1)
    sums = torch.einsum("bns,bnc->bsc", members, log_probs)
    return sums / counts.clamp(min=1)[..., None], counts


def match_segments(scores: torch.Tensor, visible: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
    """The class each segment shows, from scores B×S×C (higher is likelier; -inf for classes its caption does
    not name): every named class first takes a segment of its own, best-scoring pair first, so one class
    cannot take every segment; segments left over take their best named class. -1 for invisible segments."""
    assignment = scores.argmax(dim=-1)
    for row in range(scores.shape[0]):
        segments, classes = visible[row].nonzero()[:, 0], named[row].nonzero()[:, 0]
        pairs = scores[row][segments][:, classes].clone()
        for _ in range(min(len(segments), len(classes))):
            segment, column = divmod(int(pairs.argmax()), len(classes))
            assignment[row, segments[segment]] = classes[column]
            pairs[segment], pairs[:, column] = float("-inf"), float("-inf")
    return assignment.masked_fill(~visible, -1)


def class_phrasings(name: str) -> list[str]:
    """Ways web text might mention a class: its name, the prompt templates, and attribute sentences."""
    return [name, *(template.format(name) for template in TEMPLATES), *describe(name).values()]


def _batches(length: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        order = torch.randperm(length, generator=generator)
        for start in range(0, length - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


# CLIP ------------------------------------------------------------------------------------------------------
def dense_caption_losses(
    log_p: torch.Tensor, patch_ids: torch.Tensor, present: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Multiple-instance terms from per-patch class log-probabilities B×N×C, the class-agnostic segment of
    each patch B×N and the classes each caption names B×C."""
    segment_log_p, counts = segment_log_probs(log_p, patch_ids)
    visible = counts > 0
    named = segment_log_p.masked_fill(~present[:, None, :], float("-inf"))
    # Each segment shows one of the classes its caption names ...
    segment = -torch.logsumexp(named, dim=-1)[visible].mean()
    # ... and each named class is shown by some segment.
    presence = -segment_log_p.masked_fill(~visible[..., None], float("-inf")).amax(dim=1)[present].mean()
    # Every patch learns the class its segment is matched to, each segment weighing the same (a small object
    # counts as much as the background around it).
    target = match_segments(named.detach(), visible, present).gather(1, patch_ids)
    weight = 1 / counts.gather(1, patch_ids)
    patch_nll = F.nll_loss(log_p.transpose(1, 2), target, reduction="none")  # B×N
    patch = (patch_nll * weight).sum() / weight.sum()
    return {"segment": segment, "presence": presence, "patch": patch}


@dataclass
class ClipPretrainConfig:
    # Shape is learnt slowly (after colour), and CLIP's steps are the demo's best-spent minutes: 3500 instead
    # of 2500 raised the demo's seen mIoU by 10.6 points, 4000 instead of 3500 by 3.6 (refined), 1000 more
    # head iterations by 1.2 and 0.6 (docs/experiments/2026-12-02-head-and-clip-budget.md). The demo gives
    # CLIP most of its CPU budget (~45 of 57 min on an ordinary 2-core VM).
    steps: int = 4000
    batch_size: int = 48
    crop_size: int = 64  # crops of the bank's images: ViT cost grows with tokens², the pixel scale stays
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    dense_weight: float = 1.0  # weight of the caption-level dense terms next to the global InfoNCE
    seed: int = 0


class ClipPretrainer:
    """Contrastive image–text training of a CLIP on crops from a SceneBank (global + dense caption terms)."""

    def __init__(self, config: ClipConfig, image_size: int, train: ClipPretrainConfig) -> None:
        torch.manual_seed(train.seed)
        self.config, self.train_config = config, train
        self.model = build_open_clip(config, image_size)  # every weight trainable
        self.tokenizer = open_clip.get_tokenizer(
            config.tokenizer, context_length=config.text["context_length"]
        )
        self.mean = torch.tensor(config.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(config.std).view(1, 3, 1, 1)
        self.loss = open_clip.ClipLoss()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay, betas=(0.9, 0.98)
        )
        self.scheduler = warmup_cosine(self.optimizer, train.steps, train.warmup)
        self.rng = random.Random(train.seed)
        self.generator = torch.Generator().manual_seed(train.seed)

    def encode_images(
        self, images: torch.Tensor, grid_offset: tuple[int, int] = (0, 0)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(global B×D, dense B×N×D), L2-normalised; dense = proj(ln_post(patch tokens)) as in LSMSeg.
        A crop takes the position embeddings of where it lies in the full image."""
        visual = self.model.visual
        x = visual.conv1((images - self.mean) / self.std)
        batch, width, grid_h, grid_w = x.shape
        side = round((visual.positional_embedding.shape[0] - 1) ** 0.5)
        top, left = grid_offset
        patch_pos = visual.positional_embedding[1:].view(side, side, width)
        patch_pos = patch_pos[top : top + grid_h, left : left + grid_w].reshape(grid_h * grid_w, width)
        x = torch.cat([visual.class_embedding.expand(batch, 1, width), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + torch.cat([visual.positional_embedding[:1], patch_pos])
        x = visual.ln_post(visual.transformer(visual.ln_pre(x))) @ visual.proj
        return F.normalize(x[:, 0], dim=-1), F.normalize(x[:, 1:], dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """open_clip's encode_text on the batch's tokens only up to its longest text: the causal mask keeps
        every position from seeing the padding after it, so the result is the same (to float rounding) and a
        pretraining step 5–10 % cheaper (the synthetic texts average 14 of 48 positions, the longest 34)."""
        model = self.model
        tokens = self.tokenizer(list(texts))
        length = int((tokens != 0).sum(dim=1).max())
        tokens = tokens[:, :length]
        x = model.token_embedding(tokens) + model.positional_embedding[:length]
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        x = text_global_pool(x, tokens, model.text_pool_type) @ model.text_projection
        return F.normalize(x, dim=-1)

    def losses(self, batch: CropBatch, classes: Sequence[str]) -> dict[str, torch.Tensor]:
        """Global InfoNCE (crop ↔ its caption) and the dense terms against one phrasing per class."""
        image_global, dense = self.encode_images(batch.images, batch.grid_offset)
        scale = self.model.logit_scale.exp().clamp(max=100)
        global_loss = self.loss(image_global, self.encode_texts(batch.captions), scale)
        # Two phrasings of every class: one scores the patches, and the pair must identify each other among
        # all classes. Without this text-side term, "red star" and "red square" start (and stay) at one
        # point, and the image side gets no gradient towards shape: colour alone explains the captions.
        pairs = [self.rng.sample(class_phrasings(name), 2) for name in classes]
        class_text, paraphrase = self.encode_texts([p for pair in pairs for p in pair]).view(
            len(classes), 2, -1
        ).unbind(dim=1)  # C×D each
        text_loss = self.loss(class_text, paraphrase, scale)
        log_p = (scale * dense @ class_text.T).log_softmax(dim=-1)  # B×N×C: which class each patch shows
        dense_terms = dense_caption_losses(log_p, batch.patch_ids, batch.present)
        return {"global": global_loss, "text": text_loss, **dense_terms}

    def step(self, bank: SceneBank, indices: torch.Tensor) -> dict[str, float]:
        config = self.train_config
        batch = sample_crops(bank, indices, config.crop_size, self.config.patch_size, self.generator)
        parts = self.losses(batch, bank.classes)
        dense = parts["segment"] + parts["presence"] + parts["patch"]
        loss = parts["global"] + parts["text"] + config.dense_weight * dense
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), **{name: value.item() for name, value in parts.items()}}

    def fit(self, bank: SceneBank, progress: bool = True) -> list[dict]:
        history = []
        self.model.train()
        batches = _batches(len(bank), self.train_config.batch_size, self.generator)
        bar = tqdm(range(self.train_config.steps), desc="pretrain CLIP", unit="step", disable=not progress)
        for step in bar:
            record = {"step": step, **self.step(bank, next(batches))}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        self.model.eval()
        return history


# SAM -------------------------------------------------------------------------------------------------------
@dataclass
class SamPretrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 30
    embed_dim: int = 16  # instance-embedding width of the throwaway head
    seed: int = 0


class SegmentHead(nn.Module):
    """Throwaway head on the last three global blocks: per-pixel boundary logits (each patch predicts its
    patch² pixels) and a per-patch embedding whose cosine says whether two patches share a segment."""

    def __init__(self, width: int, patch: int, embed_dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.norm = nn.LayerNorm(3 * width)
        self.boundary = nn.Linear(3 * width, patch * patch)
        self.embedding = nn.Linear(3 * width, embed_dim)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(torch.cat(list(features), dim=1).permute(0, 2, 3, 1))  # B×g×g×3W
        boundary = F.pixel_shuffle(self.boundary(x).permute(0, 3, 1, 2), self.patch)  # B×1×S×S
        return boundary[:, 0], F.normalize(self.embedding(x).flatten(1, 2), dim=-1)


def sam_block_features(sam: SamBackbone, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """SamBackbone's forward with gradients (the backbone itself always runs under no_grad)."""
    x = sam.encoder.patch_embed((images - sam.mean) / sam.std)
    x = x + sam.encoder.pos_embed
    outputs = []
    for index, block in enumerate(sam.encoder.blocks):
        x = block(x)
        if index in sam.config.feature_layers:
            outputs.append(x.permute(0, 3, 1, 2))
    return tuple(outputs)


class SamPretrainer:
    def __init__(self, config: SamConfig, train: SamPretrainConfig) -> None:
        if config.input_size != config.built_size:
            raise ValueError("pretrain the SAM encoder at the size it is built for")
        torch.manual_seed(train.seed)
        self.train_config = train
        self.sam = SamBackbone(config)
        self.sam.encoder.requires_grad_(True)
        self.head = SegmentHead(config.embed_dim, config.patch_size, train.embed_dim)
        parameters = [*self.sam.encoder.parameters(), *self.head.parameters()]
        self.optimizer = torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, train.steps, train.warmup)
        self.generator = torch.Generator().manual_seed(train.seed)

    def losses(self, batch: CropBatch) -> dict[str, torch.Tensor]:
        """Boundary and same-segment affinity terms of a batch cut at the encoder's patch size."""
        boundary_logits, embedding = self.head(sam_block_features(self.sam, batch.images))
        edges = [torch.from_numpy(instance_boundaries(segments.numpy())) for segments in batch.segments]
        target = torch.stack(edges).float()
        # Boundaries are ~10 % of pixels: weight the positives so both kinds count.
        positive = target.mean().clamp(min=1e-3)
        boundary = F.binary_cross_entropy_with_logits(
            boundary_logits, target, pos_weight=((1 - positive) / positive).detach()
        )
        ids = batch.patch_ids  # sample_crops cut them at this encoder's patch size
        same = (ids[:, :, None] == ids[:, None, :]).float()
        affinity = F.binary_cross_entropy_with_logits(
            5 * embedding @ embedding.transpose(1, 2), same
        )
        return {"boundary": boundary, "affinity": affinity}

    def fit(self, bank: SceneBank, progress: bool = True) -> list[dict]:
        history = []
        self.sam.encoder.train()
        batches = _batches(len(bank), self.train_config.batch_size, self.generator)
        bar = tqdm(range(self.train_config.steps), desc="pretrain SAM", unit="step", disable=not progress)
        for step in bar:
            size = bank.images.shape[-1]  # whole images: the encoder is cheap next to CLIP
            batch = sample_crops(bank, next(batches), size, self.sam.config.patch_size, self.generator)
            parts = self.losses(batch)
            loss = parts["boundary"] + parts["affinity"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            record = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        self.sam.requires_grad_(False)
        self.sam.eval()
        return history


__all__ = [
    "ClipPretrainConfig",
    "ClipPretrainer",
    "SamPretrainConfig",
    "SamPretrainer",
    "SceneBank",
    "class_phrasings",
    "dense_caption_losses",
    "match_segments",
    "render_scene_bank",
    "sample_crops",
    "segment_log_probs",
]
