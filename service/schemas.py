"""Request and response bodies (docs/api.md). Field names are the public API: change them with care."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OutputFormat = Literal["label_png", "rle", "both"]
MAX_CLASSES = 4096  # the largest LSMSEG_MAX_CLASSES; a worker's own limit may be lower (422)


def _classes_or_vocab(schema: dict[str, Any]) -> None:
    """In the JSON schema: `classes` and `vocab_id` are not nullable there, and exactly one is required."""
    properties = schema["properties"]
    for field in ("classes", "vocab_id"):
        options = properties[field].pop("anyOf")
        properties[field].update(next(option for option in options if option.get("type") != "null"))
    schema["oneOf"] = [{"required": ["classes"]}, {"required": ["vocab_id"]}]


# Errors -----------------------------------------------------------------------------------------------------
class ErrorLocation(BaseModel):
    loc: list[str]
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(examples=["validation_error"])
    message: str
    details: list[ErrorLocation] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# Vocabularies -----------------------------------------------------------------------------------------------
class VocabCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, description="unique name (letters, digits, '.', '_', '-'); usable instead of the id",
        examples=["kitchen"],
    )
    classes: list[str] = Field(
        description="class names; label value i = classes[i]", min_length=1, max_length=MAX_CLASSES,
        examples=[["wall", "floor", "table"]],
    )
    descriptions: dict[str, list[str]] | None = Field(
        None, description="your own prompt sentences per class (else: bank, LLM, then templates)"
    )


class PromptSources(BaseModel):
    user: int
    bank: int
    llm: int
    template: int


class VocabOut(BaseModel):
    vocab_id: str
    name: str | None
    classes: list[str]
    num_classes: int
    prompt_version: str
    created: float = Field(description="Unix time of the first registration")
    prompt_sources: PromptSources = Field(description="how many classes took their prompts from each source")


class VocabSummary(BaseModel):
    vocab_id: str
    name: str | None
    num_classes: int
    created: float = Field(description="Unix time of the first registration; 0 for built-in ones")
    builtin: bool = Field(description="one of the prompt bank's benchmark vocabularies")


class VocabList(BaseModel):
    vocabularies: list[VocabSummary]
    total: int = Field(description="built-in and registered vocabularies in all")
    next_offset: int | None = Field(description="`offset` of the next page; null on the last one")


# Segmentation -----------------------------------------------------------------------------------------------
class SegmentOptions(BaseModel):
    """What /segment takes besides the image, in both the JSON and the multipart form."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_classes_or_vocab)

    classes: list[str] | None = Field(
        None, min_length=1, max_length=MAX_CLASSES, description="class names (give these or vocab_id)"
    )
    vocab_id: str | None = Field(None, description="id or name of a registered or built-in vocabulary")
    output: OutputFormat = Field("label_png", description="label_png, rle (COCO RLE per class) or both")
    top_k: int | None = Field(
        None, ge=1, le=4096, description="classes the CFM keeps per image (default: the model's)"
    )
    overlay: bool = Field(False, description="also return a colour overlay PNG")

    @model_validator(mode="after")
    def _classes_or_vocab(self) -> SegmentOptions:
        if (self.classes is None) == (self.vocab_id is None):
            raise ValueError("give exactly one of `classes` and `vocab_id`")
        return self


class SegmentJsonRequest(SegmentOptions):
    image: str = Field(description="PNG, JPEG or WebP bytes, base64 (a data: URL prefix is accepted)")


class SegmentForm(BaseModel):
    """multipart/form-data fields of POST /segment (documentation of the form; parsed by hand)."""

    model_config = ConfigDict(json_schema_extra=_classes_or_vocab)

    image: bytes = Field(json_schema_extra={"format": "binary"}, description="PNG, JPEG or WebP file")
    classes: str | None = Field(
        None, description='JSON array of class names, e.g. ["cat", "grass"] (give this or vocab_id)'
    )
    vocab_id: str | None = Field(None, description="id or name of a registered or built-in vocabulary")
    output: OutputFormat = "label_png"
    top_k: int | None = Field(None, ge=1, le=4096)
    overlay: bool = False


class EncodedImage(BaseModel):
    format: Literal["png"] = "png"
    data: str = Field(description="base64 PNG")


class Rle(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="compressed COCO RLE (column-major), as pycocotools writes it")


class Segment(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", serialization_alias="class")
    index: int = Field(description="label value of this class")
    area: int = Field(description="pixels labelled with the class")
    score: float = Field(description="mean probability over those pixels")
    colour: str | None = Field(None, description="the class's colour in the overlay, #rrggbb (overlay=true)")
    rle: Rle | None = None


class SegmentResponse(BaseModel):
    vocab_id: str = Field(description="content id of the class list (equal to POST /vocab's for it)")
    width: int
    height: int
    classes: list[str]
    label_map: EncodedImage | None = Field(
        None, description="PNG of class indices: 8-bit up to 256 classes, 16-bit beyond"
    )
    overlay: EncodedImage | None = None
    segments: list[Segment] = Field(description="classes present in the mask, by index")
    timings_ms: dict[str, float]


# Health -----------------------------------------------------------------------------------------------------
class ModelStatus(BaseModel):
    """The loaded model, as service/loader.py describes it and /healthz and /readyz report it (so nobody
    mistakes the random fallback for a real model)."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str = Field(description="checkpoint | preset | random-fallback")
    path: str | None = Field(description="file name of the checkpoint (not where it is kept)")
    random_weights: bool
    device: str
    image_size: int
    prompts_per_class: int
    cfm_k: int
    prompt_version: str | None
    prompt_mode: str = Field(
        description="attributes | catseg | ensemble: how class names become text embeddings"
    )
    domain: str | None = Field(
        description="what images the model knows, as its checkpoint says (the demo: synthetic scenes only); "
        "null when the checkpoint does not say"
    )
    backend: str = Field(description="torch | onnx (LSMSEG_BACKEND)")
    providers: list[str] = Field(
        description="onnxruntime execution providers in use (none for torch); `device` is torch's"
    )


class Health(BaseModel):
    status: Literal["ok", "failed"]
    model_state: str = Field(description="idle | loading | ready | failed | stopped")
    model: ModelStatus | None


class Readiness(BaseModel):
    status: Literal["ready", "loading", "failed", "stopped", "idle"]
    model: ModelStatus | None
    redis: Literal["up", "down", "disabled"]
    queue_depth: int
    error: str | None = None
