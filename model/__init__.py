"""LSMSeg model: pure torch. Public entry points are re-exported here."""

from lsmseg.model.build import (
    WeightsNotFoundError,
    add_sam,
    build_model,
    clip_weights_file,
    load_clip_weights,
    load_sam_weights,
)
from lsmseg.model.catseg_import import CatSegImportError, import_catseg
from lsmseg.model.catseg_protocol import CatSegProtocol
from lsmseg.model.cfm import Selection, cost_volume, select_categories
from lsmseg.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from lsmseg.model.config import PRESETS, ClipConfig, HeadConfig, LSMSegConfig, SamConfig, get_config
from lsmseg.model.edge_refinement import EdgeRefinement
from lsmseg.model.lsmseg import LSMSeg, LSMSegOutput
from lsmseg.model.segmenter import Segmentation, SegmentationBatch, Segmenter, UnsupportedK, to_rgb_array

__all__ = [
    "PRESETS",
    "CatSegImportError",
    "CatSegProtocol",
    "ClipConfig",
    "EdgeRefinement",
    "HeadConfig",
    "LSMSeg",
    "LSMSegConfig",
    "LSMSegOutput",
    "SamConfig",
    "Segmentation",
    "SegmentationBatch",
    "Segmenter",
    "Selection",
    "UnsupportedK",
    "WeightsNotFoundError",
    "add_sam",
    "build_model",
    "clip_weights_file",
    "cost_volume",
    "get_config",
    "import_catseg",
    "load_checkpoint",
    "load_clip_weights",
    "load_sam_weights",
    "read_metadata",
    "save_checkpoint",
    "select_categories",
    "to_rgb_array",
]
