"""Service configuration: LSMSEG_* environment variables (or `lsmseg-serve --flag` on the command line)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The embedded default model, produced by training/ on the synthetic set: package data of lsmseg.checkpoints,
# so a checkout and an installed wheel find it alike, from any working directory.
DEFAULT_CHECKPOINT = Path(str(resources.files("lsmseg.checkpoints") / "demo.safetensors"))
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Settings(BaseSettings):
    """Every knob of the worker. Unset model fields mean: the demo checkpoint if present, else `tiny`."""

    # An empty variable means unset, so compose files can write `LSMSEG_PRESET: ${LSMSEG_PRESET-}`.
    model_config = SettingsConfigDict(env_prefix="LSMSEG_", extra="ignore", env_ignore_empty=True)

    # Model -------------------------------------------------------------------------------------------------
    checkpoint: Path | None = Field(
        None, description="LSMSeg .safetensors checkpoint (default: checkpoints/demo.safetensors if present)"
    )
    preset: str | None = Field(
        None, description="build this model preset instead of loading a checkpoint (e.g. vit-b16-sam-l)"
    )
    clip_weights: str | None = Field(
        None, description="open_clip weights for a preset: a local file or a tag in open_clip's cache"
    )
    sam_checkpoint: Path | None = Field(None, description="official segment-anything .pth (SAM-L presets)")
    device: str | None = Field(None, description="torch device; default cuda when available, else cpu")
    sliding_window: bool = Field(False, description="CAT-Seg style sliding-window inference (slower)")
    # The names of prompt_cache.modes.PROMPT_MODES (not imported: it pulls in torch, which a typo in a
    # setting should not wait for).
    prompt_mode: Literal["attributes", "catseg", "ensemble"] | None = Field(
        None,
        description="how class names become text embeddings (default: the mode the checkpoint records; "
        "catseg and ensemble need a model with one prompt per class)",
    )
    edge_refinement: bool = Field(
        True, description="snap class boundaries to the image's colour edges (model/edge_refinement.py)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for the model (torch, and onnxruntime's CPU provider); "
        "default: all cores the process sees"
    )

    # Backend -----------------------------------------------------------------------------------------------
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="image graph in torch, or in onnxruntime (text encoding stays in torch)"
    )
    onnx_path: Path | None = Field(
        None, description="a graph from model.onnx.export_onnx for this model (default: export at start-up)"
    )
    onnx_cache_dir: Path | None = Field(
        None,
        description="where start-up exports are kept (default: onnx-cache/ beside the checkpoint, "
        "else ~/.cache/lsmseg/onnx)",
    )

    # Text cache --------------------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis for embeddings and vocabularies; unset: memory")
    embedding_ttl_s: int | None = Field(
        None, ge=1, description="expiry of text embeddings in Redis (pair with maxmemory-policy volatile-lru)"
    )
    vocab_memory_items: int = Field(
        1024, ge=1, description="vocabularies each worker keeps in memory (all of them without Redis)"
    )
    text_chunk_classes: int = Field(
        8, ge=1, description="new class names encoded per step of the model thread, between image batches"
    )
    text_backlog_classes: int = Field(
        1024, ge=1, description="new class names waiting to be encoded, all requests together (beyond: 503)"
    )
    llm_url: str | None = Field(None, description="OpenAI-compatible endpoint that describes unknown classes")
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None

    # Batching ----------------------------------------------------------------------------------------------
    max_batch: int = Field(8, ge=1, le=256, description="images per model call")
    max_wait_ms: float = Field(10.0, ge=0, le=10_000, description="how long a batch waits to fill up")
    queue_size: int = Field(64, ge=1, description="requests waiting for the model; beyond it: 503")
    request_timeout_s: float = Field(60.0, gt=0, description="longest wait for a result before a 503")

    # Request limits ----------------------------------------------------------------------------------------
    max_request_bytes: int = Field(20 * 2**20, ge=1024, description="request body size limit (413)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="width × height limit (413)")
    # 2× the edge refinement's side (256) and above every preset's input (96-384 px; keep it above a sliding
    # window's resized side too): detail beyond it is only interpolation, at 4× the cost per doubling.
    max_segment_side: int = Field(
        512, ge=64, description="larger images are decoded to this many pixels a side and segmented so; "
        "label maps come back at the full size"
    )
    body_timeout_s: float = Field(30.0, gt=0, description="longest time to receive a request body (408)")
    max_classes: int = Field(1024, ge=1, le=4096, description="classes per request or vocabulary (422)")
    # At most prompt_cache's own limit (200), which the prompt builder applies on its own.
    max_class_name_length: int = Field(200, ge=1, le=200, description="characters per class name (422)")
    top_k: int | None = Field(None, ge=1, description="default CFM top-k; unset = the model's own k")

    # Server ------------------------------------------------------------------------------------------------
    api_key: SecretStr | None = Field(None, description="when set, requests need `Authorization: Bearer KEY`")
    allowed_hosts: list[str] | None = Field(
        None, description='Host header names served, e.g. ["api.example.com"] ("*" = any); default: the '
        "loopback names when bound to a loopback address (against DNS rebinding), else any"
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="request line and headers together (larger: 400 from uvicorn)"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    def served_hosts(self) -> list[str] | None:
        """Host names requests may name (None: any). A loopback-bound worker answers only loopback names,
        so a web page cannot reach it through a DNS name it rebinds to 127.0.0.1."""
        if self.allowed_hosts is not None:
            return None if "*" in self.allowed_hosts else [host.lower() for host in self.allowed_hosts]
        if self.host in _LOOPBACK_HOSTS:
            return list(_LOOPBACK_HOSTS)
        return None

    @model_validator(mode="after")
    def _one_model_source(self) -> Settings:
        if self.checkpoint is not None and self.preset is not None:
            raise ValueError("set LSMSEG_CHECKPOINT or LSMSEG_PRESET, not both")
        if (self.llm_url is None) != (self.llm_model is None):
            raise ValueError("LSMSEG_LLM_URL and LSMSEG_LLM_MODEL go together")
        if self.backend == "onnx" and self.sliding_window:
            raise ValueError("the ONNX backend has no sliding window; use LSMSEG_BACKEND=torch for it")
        return self
