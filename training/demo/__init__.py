"""The demo checkpoint, from scratch: `python -m lsmseg.training.demo` (fixed seed; 2 CPU cores;
docs/demo-model.md).

1. Render synthetic scenes of all 58 classes and pretrain the tiny backbones on them (training/pretrain.py):
   CLIP on image–caption pairs only, SAM's ImageEncoderViT on class-agnostic segment targets.
2. Put both into the `demo` preset and train the LSMSeg head on the 48 SEEN classes with the real
   training.train.Trainer (CLIP q/v tuned, SAM frozen), exactly as the full-size model is trained.
3. Score the held-out test split (the registry's "synthetic-test": 500 scenes, half of the objects and
   stuff regions from the 10 unseen classes) with attribute prompts and with plain templates, with the
   sliding window, and with attribute prompts on one resized view.
4. Write checkpoints/demo.safetensors, a JSON + Markdown report and an example figure under docs/.

Parts: pipeline.py (the steps and `run`), report.py (evaluation and the Markdown report), figures.py (the
example figure), __main__.py (the command line).
"""

from lsmseg.training.demo.pipeline import (
    DEMO_CHECKPOINT,
    ROOT,
    DemoConfig,
    RenderedDataset,
    pretraining_settings,
    reused_backbones,
    run,
    train_head,
)
from lsmseg.training.demo.report import EVALUATIONS, TEST_DATASET, evaluate_test, markdown_report

__all__ = [
    "DEMO_CHECKPOINT",
    "EVALUATIONS",
    "ROOT",
    "TEST_DATASET",
    "DemoConfig",
    "RenderedDataset",
    "evaluate_test",
    "markdown_report",
    "pretraining_settings",
    "reused_backbones",
    "run",
    "train_head",
]
