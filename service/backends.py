"""Which runtime executes the image graph: torch, or onnxruntime (LSMSEG_BACKEND=onnx).

The ONNX graph comes from LSMSEG_ONNX_PATH, or is exported at start-up into a cache folder and reused while
the weight files it was made from are unchanged. Text encoding stays in torch with either backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lsmseg.model import LSMSeg, Segmenter, UnsupportedK, clip_weights_file
from lsmseg.model.edge_refinement import DEFAULT_EDGE_REFINEMENT
from lsmseg.service.loader import ModelConfigError, ModelPlan
from lsmseg.service.settings import Settings

logger = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
_SOURCES_FILE = "sources.json"  # the weight files an export was made from (path, size, mtime)

Exporter = Callable[[LSMSeg, Path, int], Path]


@dataclass(frozen=True)
class Backend:
    name: str  # torch | onnx
    segmenter: Segmenter
    providers: tuple[str, ...] = ()  # onnxruntime's execution providers in use, best first


def build_backend(
    model: LSMSeg, plan: ModelPlan, settings: Settings, device: str, export: Exporter | None = None
) -> Backend:
    """The Segmenter for the configured backend (exporting the ONNX graph first when needed)."""
    edge_refinement = DEFAULT_EDGE_REFINEMENT if settings.edge_refinement else None
    if settings.backend == "torch":
        segmenter = Segmenter(
            model, device=device, sliding_window=settings.sliding_window, edge_refinement=edge_refinement
        )
        return Backend("torch", segmenter)
    from lsmseg.model.onnx import OnnxSegmenter, check_graph_k, export_onnx

    try:  # before a slow export
        check_graph_k(model, settings.top_k)
    except UnsupportedK as exc:
        raise ModelConfigError(
            f"LSMSEG_TOP_K={settings.top_k}: {exc}. Unset LSMSEG_TOP_K or use LSMSEG_BACKEND=torch"
        ) from exc
    path = settings.onnx_path or cached_graph(model, plan, settings, export or export_onnx)
    segmenter = OnnxSegmenter(model, path, threads=settings.torch_threads, edge_refinement=edge_refinement)
    return Backend("onnx", segmenter, tuple(segmenter.providers))


def cached_graph(model: LSMSeg, plan: ModelPlan, settings: Settings, export: Exporter) -> Path:
    """The cached export for this model and its weight files; exported (atomically) when missing or stale."""
    k = model.config.cfm_k
    cache = settings.onnx_cache_dir or _default_cache_dir(plan)
    sources = _source_identity(plan, settings)
    # Where the weights live and what the model is name the folder; what the files hold is checked below.
    key = json.dumps({"config": model.config.to_json(), "k": k, "sources": sorted(sources)}, sort_keys=True)
    folder = cache / f"{model.config.name}-k{k}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if _fresh(folder, sources):
        logger.info("reusing the ONNX graph in %s", folder)
        return folder / GRAPH_FILE
    logger.warning("exporting the ONNX graph to %s (once per set of weights; this takes a while)", folder)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache))
    except OSError as exc:
        raise ModelConfigError(
            f"cannot write the ONNX cache folder {cache} ({exc}); "
            "set LSMSEG_ONNX_CACHE_DIR or LSMSEG_ONNX_PATH"
        ) from exc
    try:
        export(model, staging / GRAPH_FILE, k)
        (staging / _SOURCES_FILE).write_text(json.dumps(sources, sort_keys=True))
        _publish(staging, folder, sources)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / GRAPH_FILE


def _default_cache_dir(plan: ModelPlan) -> Path:
    if plan.checkpoint is not None:
        return plan.checkpoint.parent / "onnx-cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsmseg" / "onnx"


def _source_identity(plan: ModelPlan, settings: Settings) -> dict[str, list[int]]:
    """Weight file -> [size, mtime_ns]: a retrained checkpoint at the same path makes the graph stale.
    (open_clip tags such as "openai" are resolved by open_clip and only named in the folder key.)"""
    clip = settings.clip_weights if plan.preset is not None else None
    clip_file = clip_weights_file(clip) if clip is not None else None
    identity: dict[str, list[int]] = {}
    for file in (plan.checkpoint, settings.sam_checkpoint, clip_file):
        if file is not None:
            stat = file.stat()
            identity[str(file.resolve())] = [stat.st_size, stat.st_mtime_ns]
    if clip is not None and clip_file is None:
        identity[f"open_clip:{clip}"] = [0, 0]
    return identity


def _fresh(folder: Path, sources: dict[str, list[int]]) -> bool:
    try:
        recorded = json.loads((folder / _SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return False
    return recorded == sources and (folder / GRAPH_FILE).is_file()


def _publish(staging: Path, folder: Path, sources: dict[str, list[int]]) -> None:
    """Rename the finished export into place. Several workers may export at once: the first one wins."""
    if folder.exists():
        if _fresh(folder, sources):
            return
        shutil.rmtree(folder)  # made from older weights
    try:
        staging.rename(folder)
    except OSError:
        if not _fresh(folder, sources):
            raise
