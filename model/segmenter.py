"""Inference: preprocessing, batches with per-image vocabularies, CFM, label maps and per-class scores."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lsmseg.model.catseg_protocol import CatSegProtocol
from lsmseg.model.cfm import Selection
from lsmseg.model.device import resolve_device
from lsmseg.model.edge_refinement import DEFAULT_EDGE_REFINEMENT, EdgeRefinement
from lsmseg.model.lsmseg import LSMSeg, TextInput, per_sample
from lsmseg.model.timing import CFM, CLIP, POSTPROCESS, REFINE, SAM, StageTimer

ImageLike = np.ndarray | Image.Image
BetweenSteps = Callable[[int], object]  # called with a label map's pixels between the steps of making it

# Upsampling every class map to a large photo at once can take gigabytes; classes go through in groups.
_UPSAMPLE_CLASS_GROUP = 8
PROTOCOLS = ("lsmseg", "catseg")


class UnsupportedK(ValueError):
    """A CFM k the runtime cannot run: the ONNX graph keeps the number of classes it was exported with."""

    def __init__(self, k: int, graph_k: int) -> None:
        super().__init__(f"the ONNX graph keeps k={graph_k} classes, not {k}; other values need torch")
        self.k = k
        self.graph_k = graph_k


@dataclass
class Segmentation:
    label_map: np.ndarray  # H×W int32 at the input image's size; values index the image's class list
    scores: np.ndarray  # C float32: mean probability over the pixels labelled with the class, 0 if absent
    areas: np.ndarray  # C int64: pixels labelled with the class
    selected: np.ndarray  # class indices the CFM kept, ascending


@dataclass
class SegmentationBatch:
    results: list[Segmentation]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage for the whole batch


def pixels(image: np.ndarray) -> int:
    """What an image's label map costs: its pixels (the order of segment_each, the unit of between_steps)."""
    return image.shape[0] * image.shape[1]


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """H×W×3 uint8 RGB from a PIL image or an array (gray, RGBA, 16-bit and float [0, 1] are converted)."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype.kind == "f":
        array = (array.clip(0, 1) * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected H×W, H×W×3 or H×W×4, got shape {array.shape}")
    return np.ascontiguousarray(array[..., :3])


class Segmenter:
    """Runs an LSMSeg model on raw images.

    Each image is resized to the model's square input (or, with `sliding_window`, to a larger square covered
    by overlapping windows plus one global view, as CAT-Seg evaluates). The CFM picks one class set per image
    from the global view; label maps come back at each image's own size, their class boundaries snapped to
    the image's edges by `edge_refinement` (model/edge_refinement.py; None turns it off).

    `protocol="catseg"` (or a CatSegProtocol with other sizes) evaluates as CAT-Seg does instead
    (model/catseg_protocol.py): its own resizing and windows, per-view class selection, always fp32 and
    without edge refinement, whatever `dtype`, `sliding_window` and `edge_refinement` say.
    """

    def __init__(
        self,
        model: LSMSeg,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        sliding_window: bool = False,
        window_overlap: float = 1 / 3,
        class_chunk: int | None = None,
        edge_refinement: EdgeRefinement | None = DEFAULT_EDGE_REFINEMENT,
        protocol: str | CatSegProtocol = "lsmseg",
    ) -> None:
        self.catseg = _catseg_protocol(protocol)  # None: LSMSeg's own protocol
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        # bf16 on GPUs (the paper's models run fine in it); fp32 on CPUs, where bf16 is slow.
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.sliding_window = sliding_window
        size = model.config.image_size
        patch = model.config.clip.patch_size
        self.window_stride = max(patch, round(size * (1 - window_overlap) / patch) * patch)
        self.sliding_size = size + self.window_stride  # two windows per side
        self.class_chunk = class_chunk
        self.edge_refinement = edge_refinement  # None: label maps straight from the model's probabilities
        if self.catseg is not None:
            self.dtype, self.edge_refinement = torch.float32, None

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def check_k(self, k: int | None) -> None:
        """Raise for a CFM k this runtime cannot run (UnsupportedK from the ONNX one); torch runs any k."""

    def views(self) -> dict[str, int]:
        """What the model sees of each image: the global view's side and, with the sliding window, the side
        the image is resized to, the window side and stride, and the number of windows."""
        size = self.image_size
        if self.catseg is not None:
            return self.catseg.describe(size)
        if not self.sliding_window:
            return {"global": size}
        return {
            "global": size,
            "resized": self.sliding_size,
            "window": size,
            "stride": self.window_stride,
            "windows": len(self._window_offsets()) ** 2,
        }

    def _window_offsets(self) -> range:
        """Top (and left) pixel offsets of the sliding windows inside the resized image."""
        return range(0, self.sliding_size - self.image_size + 1, self.window_stride)

    def _tensor(self, images: Sequence[np.ndarray], size: int | tuple[int, int]) -> torch.Tensor:
        """B×3×H×W float in [0, 1], each image resized to `size` (a side, or height and width)."""
        size = (size, size) if isinstance(size, int) else size
        resized = [
            F.interpolate(
                torch.tensor(image, device=self.device).permute(2, 0, 1)[None].float() / 255,
                size=size,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            for image in images
        ]
        return torch.cat(resized)

    def _probabilities(
        self,
        images: torch.Tensor,
        selection: Selection | None,
        text: TextInput,
        k: int | None,
        timer: StageTimer,
        output_size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, Selection]:
        """B×K×S×S class probabilities of one view (padded classes at -1) and the selection used; S is the
        view's side unless `output_size` says otherwise."""
        model = self.model
        with timer.stage(CLIP):
            clip_features = model.clip_features(images)
        with timer.stage(SAM):
            guidance = model.fuse(clip_features, model.sam_features(images))
        if selection is None:
            with timer.stage(CFM):
                selection = model.select(clip_features.dense.float(), text, k)
        with timer.stage(REFINE):
            size = output_size or tuple(images.shape[-2:])
            logits = model.refine(clip_features.dense, guidance, selection, size, self.class_chunk)
            probs = torch.sigmoid(logits.float()).masked_fill(~selection.mask[:, :, None, None], -1.0)
        return probs, selection

    def _sliding_probabilities(
        self, images: torch.Tensor, text: TextInput, k: int | None, timer: StageTimer
    ) -> tuple[torch.Tensor, Selection]:
        size, full = self.image_size, self.sliding_size
        global_view = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        global_probs, selection = self._probabilities(global_view, None, text, k, timer)
        total = global_probs.new_zeros(global_probs.shape[0], global_probs.shape[1], full, full)
        counts = global_probs.new_zeros(1, 1, full, full)
        for top in self._window_offsets():
            for left in self._window_offsets():
                window = images[:, :, top : top + size, left : left + size]
                probs, _ = self._probabilities(window, selection, text, k, timer)
                total[:, :, top : top + size, left : left + size] += probs
                counts[:, :, top : top + size, left : left + size] += 1
        upsampled = F.interpolate(global_probs, size=(full, full), mode="bilinear", align_corners=False)
        return (total / counts + upsampled) / 2, selection

    @torch.inference_mode()
    def catseg_probabilities(
        self, image: ImageLike, text: torch.Tensor, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The CAT-Seg protocol's probabilities of one image (C×P×D text) before the resize to the image's
        size: U×canvas×canvas for the U classes some view kept, and their indices into the C classes."""
        if self.catseg is None:
            raise ValueError("catseg_probabilities needs a Segmenter made with protocol='catseg'")
        timer = StageTimer(self.device)  # evaluation does not report stage times
        return self._catseg_probabilities(to_rgb_array(image), text.to(self.device), k, timer)

    def _catseg_probabilities(
        self, image: np.ndarray, text: torch.Tensor, k: int | None, timer: StageTimer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.catseg is not None
        views = self.catseg.views(image, self.image_size, self.device)
        window = (self.catseg.window, self.catseg.window)
        probs, selection = self._probabilities(views, None, text, k, timer, output_size=window)
        with timer.stage(POSTPROCESS):
            return self.catseg.combine(probs, selection)

    def _label_map(
        self,
        probs: torch.Tensor,
        classes: torch.Tensor,
        image: np.ndarray,
        num_classes: int,
        timer: StageTimer,
        between_steps: BetweenSteps | None,
    ) -> Segmentation:
        """probs 1×K×s×s of the K classes `classes` -> the label map at the image's size, timed as POSTPROCESS
        except `between_steps`, called with its pixels between edge-refinement passes and class groups."""
        height, width = image.shape[:2]
        step = partial(timer.aside, partial(between_steps, pixels(image))) if between_steps else None
        with timer.stage(POSTPROCESS):
            if self.edge_refinement is not None:
                size = self.edge_refinement.working_size(height, width)
                probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
                probs = self.edge_refinement(probs[0], self._tensor([image], size)[0], step)[None]
            best = probs.new_full((height, width), -2.0)
            winner = torch.zeros((height, width), dtype=torch.long, device=probs.device)
            for start in range(0, probs.shape[1], _UPSAMPLE_CLASS_GROUP):
                if step is not None:
                    step()
                group = probs[:, start : start + _UPSAMPLE_CLASS_GROUP]
                if group.shape[-2:] != (height, width):
                    group = F.interpolate(group, size=(height, width), mode="bilinear", align_corners=False)
                value, position = group[0].max(dim=0)
                better = value > best
                best = torch.where(better, value, best)
                winner = torch.where(better, position + start, winner)
            labels = classes[winner]
            areas = torch.bincount(labels.flatten(), minlength=num_classes)
            sums = torch.bincount(labels.flatten(), weights=best.flatten().double(), minlength=num_classes)
            scores = (sums / areas.clamp(min=1)).float()
            return Segmentation(
                label_map=labels.to(torch.int32).cpu().numpy(),
                scores=scores.cpu().numpy(),
                areas=areas.cpu().numpy(),
                selected=classes.cpu().numpy(),
            )

    @torch.inference_mode()
    def segment(
        self, images: Sequence[ImageLike], text: TextInput, k: int | None = None
    ) -> SegmentationBatch:
        """Segment a batch. text: one C×P×D vocabulary for all images, or one per image (sizes may differ)."""
        results: dict[int, Segmentation] = {}
        timings: dict[str, float] = {}
        for index, segmentation, so_far in self.segment_each(images, text, k):
            results[index], timings = segmentation, so_far
        return SegmentationBatch(results=[results[index] for index in range(len(images))], timings=timings)

    @torch.inference_mode()
    def segment_each(
        self,
        images: Sequence[ImageLike],
        text: TextInput,
        k: int | None = None,
        between_steps: BetweenSteps | None = None,
    ) -> Iterator[tuple[int, Segmentation, dict[str, float]]]:
        """As segment(), but each image's result as soon as its label map is done, the fewest pixels first:
        (its index in `images`, its segmentation, seconds per stage of the batch so far). The model runs the
        batch at once; label maps are per image and grow with its size, so a batch's small images need not
        wait for a large one's. A label map is made in steps, and `between_steps(pixels)`, when given, is
        called between them with the map's pixels: the caller may run other work there (a server, smaller
        requests), which the stage times do not count."""
        if not images:
            return
        arrays = [to_rgb_array(image) for image in images]
        texts = [t.to(self.device) for t in per_sample(text, len(arrays))]
        order = sorted(range(len(arrays)), key=lambda index: pixels(arrays[index]))
        timer = StageTimer(self.device)
        if self.catseg is not None:
            # One image at a time, as CAT-Seg evaluates: its views are the batch.
            for index in order:
                probs, classes = self._catseg_probabilities(arrays[index], texts[index], k, timer)
                array, num_classes = arrays[index], texts[index].shape[0]
                result = self._label_map(probs[None], classes, array, num_classes, timer, between_steps)
                yield index, result, timer.seconds()
            return
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast:
            if self.sliding_window:
                batch = self._tensor(arrays, self.sliding_size)
                probs, selection = self._sliding_probabilities(batch, texts, k, timer)
            else:
                batch = self._tensor(arrays, self.image_size)
                probs, selection = self._probabilities(batch, None, texts, k, timer)
        for index in order:
            kept = selection.mask[index]
            classes = selection.indices[index][kept]
            result = self._label_map(
                probs[index][kept][None], classes, arrays[index], texts[index].shape[0], timer, between_steps
            )
            yield index, result, timer.seconds()


def _catseg_protocol(protocol: str | CatSegProtocol) -> CatSegProtocol | None:
    if isinstance(protocol, CatSegProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS} or a CatSegProtocol, got {protocol!r}")
    return CatSegProtocol() if protocol == "catseg" else None
