"""ONNX export of the image-side graph + CFM + refinement head, and an onnxruntime Segmenter.

The exported graph takes images (B×3×S×S in [0, 1]) and one vocabulary's text embeddings (C×P×D) — batch and
class count are dynamic — and returns the kept classes' logits (B×k'×S×S) with their indices (B×k'), k' =
min(k, C). Text encoding stays in torch (it runs once per vocabulary and is cached).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lsmseg.model.cfm import Selection, cost_volume
from lsmseg.model.edge_refinement import DEFAULT_EDGE_REFINEMENT, EdgeRefinement
from lsmseg.model.lsmseg import LSMSeg, TextInput, per_sample
from lsmseg.model.segmenter import Segmenter, UnsupportedK
from lsmseg.model.timing import ONNX, StageTimer

logger = logging.getLogger(__name__)


def check_graph_k(model: LSMSeg, k: int | None) -> None:
    """The ONNX backend's one rule for k: its graph is exported with the model's cfm_k (export_onnx's
    default), so any other k is refused (UnsupportedK); None means that k."""
    if k is not None and k != model.config.cfm_k:
        raise UnsupportedK(k, model.config.cfm_k)


class ExportableLSMSeg(nn.Module):
    """LSMSeg with the CFM written for one vocabulary shared by the batch (no Python loop over samples)."""

    def __init__(self, model: LSMSeg, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = k

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        features = model.clip_features(images)
        guidance = model.fuse(features, model.sam_features(images))
        scores = cost_volume(features.dense, text).flatten(2).amax(dim=2)  # B×C
        kept = torch.sym_min(self.k, text.shape[0])
        indices = scores.topk(kept, dim=1).indices.sort(dim=1).values
        selected = F.normalize(text, dim=-1)[indices]  # B×k'×P×D
        mask = torch.ones(indices.shape, dtype=torch.bool, device=indices.device)
        selection = Selection(indices=indices, text=selected, mask=mask)
        logits = model.refine(features.dense, guidance, selection, (images.shape[-2], images.shape[-1]))
        return logits, indices


def export_onnx(model: LSMSeg, path: str | Path, k: int | None = None, opset: int = 18) -> Path:
    """Write the graph (weights in `<path>.data` next to it when large). Batch and class count are dynamic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    k = k or config.cfm_k
    wrapper = ExportableLSMSeg(model.eval(), k).eval()
    # Sample sizes above 1 and above k, so the exporter does not specialise batch or class count.
    images = torch.rand(2, 3, config.image_size, config.image_size)
    text = F.normalize(torch.randn(k + 3, config.prompts_per_class, config.clip.embed_dim), dim=-1)
    batch = torch.export.Dim("batch", min=1, max=256)
    classes = torch.export.Dim("classes", min=1, max=65_536)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (images, text),
            input_names=["images", "text"],
            output_names=["logits", "indices"],
            dynamic_shapes={"images": {0: batch}, "text": {0: classes}},
            opset_version=opset,
            dynamo=True,
        )
    program.save(str(path))
    return path


class OnnxSegmenter(Segmenter):
    """The Segmenter API on an onnxruntime session (CUDA provider when available, else CPU)."""

    def __init__(
        self,
        model: LSMSeg,
        onnx_path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        edge_refinement: EdgeRefinement | None = DEFAULT_EDGE_REFINEMENT,
    ) -> None:
        import onnxruntime

        super().__init__(model, device="cpu", dtype=torch.float32, edge_refinement=edge_refinement)
        available = set(onnxruntime.get_available_providers())
        # onnxruntime-gpu lists CUDA even on a machine without a GPU, then logs a loading error per session.
        if not torch.cuda.is_available():
            available.discard("CUDAExecutionProvider")
        wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = onnxruntime.SessionOptions()
        if threads is not None:
            # As torch.set_num_threads: on a CPU shared with other processes, fewer threads that spin less.
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=list(wanted))
        # onnxruntime-gpu silently falls back to the CPU when CUDA libraries are missing: report what runs.
        self.providers = self.session.get_providers()
        logger.info("onnxruntime providers: %s", self.providers)

    def check_k(self, k: int | None) -> None:
        check_graph_k(self.model, k)

    def _probabilities(
        self,
        images: torch.Tensor,
        selection: Selection | None,
        text: TextInput,
        k: int | None,
        timer: StageTimer,
    ) -> tuple[torch.Tensor, Selection]:
        if selection is not None:
            raise ValueError("the ONNX graph has no sliding window; use the torch backend")
        self.check_k(k)
        texts = per_sample(text, images.shape[0])
        outputs = []
        with timer.stage(ONNX):
            for index, vocabulary in enumerate(texts):  # one shared vocabulary per graph call
                logits, kept = self.session.run(
                    None, {"images": images[index : index + 1].numpy(), "text": vocabulary.float().numpy()}
                )
                outputs.append((torch.from_numpy(logits[0]), torch.from_numpy(kept[0])))
        width = max(len(kept) for _, kept in outputs)
        size = images.shape[-2:]
        probs = torch.full((len(outputs), width, *size), -1.0)
        indices = torch.full((len(outputs), width), -1, dtype=torch.long)
        for row, (logits, kept) in enumerate(outputs):
            probs[row, : len(kept)] = torch.sigmoid(logits)
            indices[row, : len(kept)] = kept
        mask = indices >= 0
        return probs, Selection(indices=indices, text=torch.empty(0), mask=mask)
