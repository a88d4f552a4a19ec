"""Training loop: full-model LSMSeg checkpoints from a segmentation dataset (paper §4.2 defaults).

    lsmseg-train --config my-run.yaml iterations=1000 output_dir=runs/try  # YAML of TrainConfig fields
    torchrun --nproc-per-node 4 -m lsmseg.training.train --config my-run.yaml
    lsmseg-train init=catseg-b16.safetensors fusion=weight sam_checkpoint=sam_vit_l_0b3195.pth  # from CAT-Seg

Single process or torchrun DDP (one process per GPU, gloo on CPU). Resumable: model, optimiser, schedule,
RNG state and the data position are saved every `checkpoint_every` iterations.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lsmseg.model import (
    LSMSeg,
    add_sam,
    build_model,
    get_config,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from lsmseg.model.device import AUTO, resolve_device
from lsmseg.prompt_cache.modes import class_encoder, recorded_prompt_mode, resolve_prompt_mode
from lsmseg.training.data import LoaderSpec, training_batches
from lsmseg.training.loss import class_presence, segmentation_loss
from lsmseg.training.prompts import class_prompts, dataset_descriptions
from lsmseg.training.schedule import warmup_cosine

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


@dataclass
class TrainConfig:
    preset: str = "vit-b16-sam-l"
    clip_pretrained: str | None = "openai"
    sam_checkpoint: str | None = None
    init: str | None = None  # start from an LSMSeg checkpoint instead of the preset's backbones
    # With init: add `preset`'s frozen SAM and this fusion to a model without SAM (e.g. an imported CAT-Seg);
    # "weight" starts zero-gated, i.e. exactly at the init model's outputs.
    fusion: str | None = None
    dataset: str = "coco171-train"
    dataset_root: str | None = None
    prompts: str = "bank"  # "bank" (bank -> LLM -> template, per PromptBuilder) or "template"
    # How class names become text (prompt_cache.modes: attributes, catseg, ensemble), recorded in the
    # checkpoints written. None: the mode the init checkpoint records, else "attributes" (LSMSeg's own).
    prompt_mode: str | None = None
    crop_size: int | None = None  # default: the model's image_size (384 for ViT-B/16, 336 for ViT-L/14)
    # Scale jitter: the short side is resized to crop_size × U(scale_range) before the crop (CAT-Seg's 0.5–2).
    scale_range: tuple[float, float] = (0.5, 2.0)
    iterations: int = 80_000
    batch_size: int = 4  # global, over all processes and accumulation steps
    grad_accumulation: int = 1
    lr: float = 2e-4
    weight_decay: float = 1e-4
    clip_lr_multiplier: float = 0.01
    warmup_iterations: int = 0
    grad_clip: float | None = 0.01
    cfm_k: int | None = None  # default: the model's
    precision: str = "auto"  # "auto" = bf16 on GPU, fp32 on CPU; or "bf16" / "fp32"
    checkpoint_every: int = 5000
    log_every: int = 20
    output_dir: str = "runs/lsmseg"
    seed: int = 0
    num_workers: int = 4
    device: str = AUTO  # or a torch device such as "cpu", "cuda:1"

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
        """From a YAML file (optional), then `key=value` overrides (values parsed as YAML)."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(yaml.safe_load(Path(path).read_text()) or {})
        for override in overrides:
            key, separator, raw = override.partition("=")
            if not separator:
                raise ValueError(f"override {override!r} is not key=value")
            values[key.strip()] = yaml.safe_load(raw)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**values)

    def __post_init__(self) -> None:
        if self.fusion is not None and self.init is None:
            raise ValueError("fusion= adds SAM to an init= checkpoint; a preset brings its own fusion")


class TrainStep(nn.Module):
    """What DDP wraps: text encoding happens inside forward so the text tower's q/v gradients sync too."""

    def __init__(self, model: LSMSeg, prompts: list[list[str]], k: int | None, prompt_mode: str) -> None:
        super().__init__()
        self.model = model
        self.prompts = prompts
        self.k = k
        self.encode = class_encoder(prompt_mode, model.encode_text)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        text = self.encode(self.prompts)
        # Ground-truth classes always get a CFM slot, so every labelled pixel has its class to learn from.
        force = class_presence(labels, len(self.prompts))
        output = self.model(images, text, k=self.k, force=force, return_selection=True)
        return segmentation_loss(output.logits, output.indices, output.mask, labels)


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Distributed:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return _Distributed()
    dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return _Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _process_device(device: torch.device, distributed: _Distributed) -> torch.device:
    if device.type == "cuda" and device.index is None:  # torchrun: one GPU per process
        torch.cuda.set_device(distributed.local_rank)
        return torch.device("cuda", distributed.local_rank)
    return device


def _build(config: TrainConfig) -> LSMSeg:
    if config.init:
        model = load_checkpoint(config.init, sam_checkpoint=config.sam_checkpoint)
        if config.fusion is None:
            return model
        sam = get_config(config.preset).sam
        if sam is None:
            raise ValueError(f"preset {config.preset!r} has no SAM encoder to add; pick one that has")
        return add_sam(model, sam, config.fusion, config.sam_checkpoint)
    return build_model(
        config.preset, clip_pretrained=config.clip_pretrained, sam_checkpoint=config.sam_checkpoint
    )


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, config: TrainConfig, dataset: Any | None = None) -> None:
        self.config = config
        device = resolve_device(config.device)
        self.distributed = _init_distributed(device.type)
        self.device = _process_device(device, self.distributed)
        torch.manual_seed(config.seed)
        self.output_dir = Path(config.output_dir)
        if self.distributed.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.model = _build(config).to(self.device).train()
        self.spec = LoaderSpec.from_config(config, self.model.config.image_size, self.distributed.world_size)
        self.dataset = dataset
        init_metadata = read_metadata(config.init) if config.init else {}
        recorded = recorded_prompt_mode(init_metadata)
        # What the checkpoints will say the model knows: the training set, after what an init model knew.
        trained_on = f"trained on {config.dataset}"
        known = init_metadata.get("domain")
        self.domain = f"{known}; then {trained_on}" if known else trained_on
        self.prompt_mode = resolve_prompt_mode(
            recorded, config.prompt_mode, self.model.config.prompts_per_class
        )
        self.prompts, self.prompt_sources = class_prompts(
            self._classes(),
            self.model.config.prompts_per_class,
            config.prompts,
            dataset_descriptions(self.dataset),
            mode=self.prompt_mode,
        )
        step = TrainStep(self.model, self.prompts, config.cfm_k, self.prompt_mode).to(self.device)
        self.step = DistributedDataParallel(step) if self.distributed.enabled else step
        self.optimizer = torch.optim.AdamW(
            self.model.parameter_groups(config.lr, config.weight_decay, config.clip_lr_multiplier)
        )
        self.scheduler = warmup_cosine(self.optimizer, config.iterations, config.warmup_iterations)
        self.iteration = 0
        self.autocast_dtype = self._precision()

    def _classes(self) -> list[str]:
        from lsmseg.training.datasets import build_dataset

        if self.dataset is None:
            self.dataset = build_dataset(self.config.dataset, root=self.config.dataset_root)
        return list(self.dataset.classes)

    def _precision(self) -> torch.dtype | None:
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
        return torch.bfloat16 if precision == "bf16" else None

    # State --------------------------------------------------------------------------------------------------
    def save_state(self) -> Path:
        path = self.output_dir / STATE_FILE
        state = {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "config": dataclasses.asdict(self.config),
        }
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(path)  # never leave a half-written state behind
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from a saved state (default: the output folder's). False when there is none."""
        path = Path(path) if path is not None else self.output_dir / STATE_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)
        return True

    def save_checkpoint(self, name: str) -> Path:
        extra = {
            "iteration": self.iteration,
            "dataset": self.config.dataset,
            "classes": len(self.prompts),
            "prompt_sources": self.prompt_sources,
        }
        return save_checkpoint(
            self.model, self.output_dir / name, extra=extra, prompt_mode=self.prompt_mode, domain=self.domain
        )

    # Loop ---------------------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in training_batches(
            self.dataset, self.spec, self.distributed.rank, self.iteration
        ):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_iteration(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """One optimiser step over `grad_accumulation` micro-batches; the mean loss of this process."""
        total = 0.0
        accumulation = self.config.grad_accumulation
        for micro in range(accumulation):
            images, labels = next(batches)
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last or not self.distributed.enabled else self.step.no_sync()
            with sync, self._autocast():
                loss = self.step(images, labels) / accumulation
            with sync:
                loss.backward()
            total += float(loss.detach())
        if self.config.grad_clip:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(trainable, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        return total

    def _mean_over_ranks(self, value: float) -> float:
        if not self.distributed.enabled:
            return value
        tensor = torch.tensor([value], device=self.device)
        dist.all_reduce(tensor)
        return float(tensor) / self.distributed.world_size

    def fit(self) -> Path | None:
        """Train to `iterations`; returns the final checkpoint path (rank 0) or None (other ranks)."""
        config = self.config
        batches = self._batches()
        log = (self.output_dir / "log.jsonl").open("a") if self.distributed.main else None
        writer = _tensorboard(self.output_dir) if self.distributed.main else None
        bar = tqdm(
            total=config.iterations,
            initial=self.iteration,
            disable=not self.distributed.main,
            desc="train",
            unit="it",
            dynamic_ncols=True,
        )
        started, done_since_log = time.perf_counter(), 0
        try:
            while self.iteration < config.iterations:
                loss = self.train_iteration(batches)
                done_since_log += 1
                bar.update(1)
                if self.iteration % config.log_every == 0 or self.iteration == config.iterations:
                    loss = self._mean_over_ranks(loss)
                    elapsed = time.perf_counter() - started
                    record = {
                        "iteration": self.iteration,
                        "loss": loss,
                        "lr": self.scheduler.get_last_lr()[0],
                        "images_per_s": done_since_log * config.batch_size / max(elapsed, 1e-9),
                    }
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
                    if log is not None:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    if writer is not None:
                        for key in ("loss", "lr", "images_per_s"):
                            writer.add_scalar(f"train/{key}", record[key], self.iteration)
                    started, done_since_log = time.perf_counter(), 0
                if self.iteration % config.checkpoint_every == 0 and self.iteration < config.iterations:
                    self._checkpoint(f"checkpoint_{self.iteration:07d}.safetensors")
            return self._checkpoint("final.safetensors")
        finally:
            bar.close()
            if log is not None:
                log.close()
            if writer is not None:
                writer.close()

    def _checkpoint(self, name: str) -> Path | None:
        path = None
        if self.distributed.main:
            path = self.save_checkpoint(name)
            self.save_state()
        if self.distributed.enabled:
            dist.barrier()
        return path

    def close(self) -> None:
        if self.distributed.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _tensorboard(folder: Path) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="YAML file with TrainConfig fields")
    parser.add_argument("--no-resume", action="store_true", help="ignore a saved state in output_dir")
    parser.add_argument("overrides", nargs="*", help="key=value TrainConfig overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer = Trainer(TrainConfig.load(args.config, args.overrides))
    try:
        if not args.no_resume:
            trainer.resume()
        final = trainer.fit()
        if final is not None:
            print(f"final checkpoint: {final}")
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
