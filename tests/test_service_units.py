"""In-process checks of the service's pure parts: mask encodings, image decoding, Accept, the batcher."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from lsmseg.model import Segmenter, WeightsNotFoundError, build_model, get_config, save_checkpoint
from lsmseg.model.edge_refinement import DEFAULT_EDGE_REFINEMENT
from lsmseg.service.backends import Backend, build_backend
from lsmseg.service.batcher import Batcher, Job
from lsmseg.service.client import read_label_png
from lsmseg.service.engine import Engine, SegmentJob, SegmentOutput
from lsmseg.service.errors import ApiError
from lsmseg.service.exceptions import ModelFailed, QueueFull
from lsmseg.service.images import decode_base64_image, decode_image
from lsmseg.service.loader import FALLBACK_PRESET, ModelConfigError, ModelPlan, load_model, plan_model
from lsmseg.service.masks import class_rle, label_png, overlay_png, palette, scale_labels, scaled_areas
from lsmseg.service.metrics import Metrics
from lsmseg.service.routes.segment import _prefers_png
from lsmseg.service.settings import DEFAULT_CHECKPOINT, Settings


@pytest.mark.parametrize(("num_classes", "mode"), [(2, "P"), (256, "P"), (257, "I;16"), (4096, "I;16")])
def test_label_png_round_trips_at_8_and_16_bits(num_classes, mode):
    rng = np.random.default_rng(0)
    label_map = rng.integers(0, num_classes, size=(37, 53)).astype(np.int32)
    label_map[0, 0] = num_classes - 1
    png = label_png(label_map, num_classes)
    assert Image.open(io.BytesIO(png)).mode == mode
    np.testing.assert_array_equal(read_label_png(png), label_map)


def test_rle_is_pycocotools_column_major_encoding():
    label_map = np.zeros((5, 7), dtype=np.int32)
    label_map[1:3, 2:6] = 1
    rle = class_rle(label_map, 1)
    assert rle["size"] == [5, 7] and isinstance(rle["counts"], str)
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded, (label_map == 1).astype(np.uint8))
    # Same string as pycocotools' own encoding of the column-major (Fortran-ordered) mask.
    reference = coco_mask.encode(np.asfortranarray((label_map == 1).astype(np.uint8)))
    assert rle["counts"] == reference["counts"].decode()


@pytest.mark.parametrize(
    ("small", "full"), [((7, 5), (13, 29)), ((512, 384), (6000, 4500)), ((3, 100), (7, 1000))]
)
def test_labels_scale_up_by_pixel_centre_and_areas_are_counted_on_the_small_map(small, full):
    label_map = np.random.default_rng(0).integers(0, 9, size=small).astype(np.uint8)
    scaled = scale_labels(label_map, *full)
    rows = ((np.arange(full[0]) + 0.5) * small[0] / full[0]).astype(int)
    columns = ((np.arange(full[1]) + 0.5) * small[1] / full[1]).astype(int)
    np.testing.assert_array_equal(scaled, label_map[rows[:, None], columns[None, :]])
    np.testing.assert_array_equal(scaled_areas(label_map, *full, 9), np.bincount(scaled.ravel(), minlength=9))


def test_decoding_a_large_image_reduces_it_and_keeps_its_displayed_size():
    rotated = Image.new("RGB", (3000, 1000), (200, 10, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    for data in (_encode(rotated, "JPEG", exif=exif.tobytes()), _encode(Image.new("P", (3000, 1000)), "PNG")):
        decoded = decode_image(data, max_pixels=10_000_000, max_side=600)
        assert max(decoded.rgb.shape[:2]) == 600 and decoded.reduced
    assert (decoded.width, decoded.height) == (3000, 1000)  # the PNG
    jpeg = decode_image(_encode(rotated, "JPEG", exif=exif.tobytes()), max_pixels=10_000_000, max_side=600)
    assert (jpeg.width, jpeg.height) == (1000, 3000) and jpeg.rgb.shape == (600, 200, 3)
    assert not decode_image(_encode(rotated, "PNG"), max_pixels=10_000_000, max_side=3000).reduced


def test_palette_is_fixed_and_overlay_keeps_the_size():
    np.testing.assert_array_equal(palette(300)[:256], palette(256))
    assert len({tuple(colour) for colour in palette(32)}) == 32
    rgb = np.full((20, 30, 3), 200, dtype=np.uint8)
    overlay = Image.open(io.BytesIO(overlay_png(rgb, np.ones((20, 30), dtype=np.int32))))
    assert overlay.size == (30, 20) and overlay.mode == "RGB"


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_decode_checks_size_before_pixels():
    started = time.perf_counter()
    with pytest.raises(ApiError) as error:
        decode_image(_encode(Image.new("L", (6000, 5000)), "PNG"), max_pixels=10_000_000)
    assert error.value.status == 413 and "6000×5000" in error.value.message
    assert time.perf_counter() - started < 1.0


def test_decode_converts_modes_and_applies_exif():
    gray = decode_image(_encode(Image.new("L", (8, 4), 9), "PNG"), max_pixels=100)
    assert gray.rgb.shape == (4, 8, 3) and gray.format == "PNG"
    rotated = Image.new("RGB", (8, 4))
    exif = rotated.getexif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    decoded = decode_image(_encode(rotated, "JPEG", exif=exif.tobytes()), max_pixels=100)
    assert (decoded.width, decoded.height) == (4, 8)


@pytest.mark.parametrize(
    ("text", "code"),
    [("http://x/y.png", "image_url_not_supported"), ("ab$c", "invalid_base64"), ("abc", "invalid_base64")],
)
def test_base64_errors(text, code):
    with pytest.raises(ApiError) as error:
        decode_base64_image(text)
    assert error.value.status == 400 and error.value.code == code


def test_base64_accepts_data_urls_and_line_breaks():
    assert decode_base64_image("data:image/png;base64,aGVs\nbG8=") == b"hello"


@pytest.mark.parametrize(
    ("accept", "png"),
    [
        (None, False),
        ("*/*", False),
        ("image/png", True),
        ("image/png, application/json", False),
        ("application/json;q=0.5, image/png", True),
        ("image/*", True),
        ("image/png;q=0.1, */*;q=0.2", False),
        ("image/png;q=bad", False),
    ],
)
def test_accept_negotiation(accept, png):
    assert _prefers_png(accept) is png


def test_settings_reject_two_model_sources(monkeypatch):
    monkeypatch.setenv("LSMSEG_CHECKPOINT", "a.safetensors")
    monkeypatch.setenv("LSMSEG_PRESET", "tiny")
    with pytest.raises(ValueError, match="not both"):
        Settings()


def test_no_configuration_means_the_demo_checkpoint(monkeypatch):
    for name in ("LSMSEG_CHECKPOINT", "LSMSEG_PRESET", "LSMSEG_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    plan = plan_model(Settings())
    assert (plan.source, plan.checkpoint, plan.preset) == ("checkpoint", DEFAULT_CHECKPOINT, None)
    assert not plan.random_weights


@pytest.mark.parametrize(("value", "refined"), [(None, True), ("true", True), ("false", False)])
def test_edge_refinement_is_on_unless_turned_off(monkeypatch, tiny_model, value, refined):
    monkeypatch.delenv("LSMSEG_BACKEND", raising=False)
    if value is None:
        monkeypatch.delenv("LSMSEG_EDGE_REFINEMENT", raising=False)
    else:
        monkeypatch.setenv("LSMSEG_EDGE_REFINEMENT", value)
    backend = build_backend(tiny_model, ModelPlan("preset", None, "tiny"), Settings(), "cpu")
    assert backend.segmenter.edge_refinement is (DEFAULT_EDGE_REFINEMENT if refined else None)


def test_without_the_demo_checkpoint_a_random_tiny_model_is_served_with_a_loud_warning(
    monkeypatch, tmp_path, caplog
):
    for name in ("LSMSEG_CHECKPOINT", "LSMSEG_PRESET", "LSMSEG_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("lsmseg.service.loader.DEFAULT_CHECKPOINT", tmp_path / "absent.safetensors")
    plan = plan_model(Settings())
    assert (plan.source, plan.checkpoint, plan.preset) == ("random-fallback", None, FALLBACK_PRESET)
    assert plan.random_weights
    with caplog.at_level("WARNING", logger="lsmseg.service.loader"):
        model, info = load_model(plan, Settings(device="cpu"))
    assert "RANDOM weights" in caplog.text and "absent.safetensors" in caplog.text
    assert model.config.name == FALLBACK_PRESET == "tiny"
    assert (info.source, info.random_weights) == ("random-fallback", True)


def test_missing_weights_name_the_setting_to_fix_while_model_messages_do_not(tmp_path):
    with pytest.raises(ModelConfigError, match="LSMSEG_CLIP_WEIGHTS") as error:
        plan_model(Settings(preset="tiny", clip_weights="/nowhere/clip.pt"))
    assert "'/nowhere/clip.pt' does not exist" in str(error.value)
    # A tag is looked up while loading: the tiny preset has no open_clip architecture to look it up for.
    plan = plan_model(Settings(preset="tiny", clip_weights="openai"))
    with pytest.raises(ModelConfigError, match=r"no open_clip architecture.*LSMSEG_CLIP_WEIGHTS"):
        load_model(plan, Settings(preset="tiny", clip_weights="openai", device="cpu"))

    config = get_config("tiny")
    config.sam.checkpoint_file = "sam_tiny.pth"  # official SAM weights: left out of the checkpoint
    path = save_checkpoint(build_model(config), tmp_path / "no_sam.safetensors")
    settings = Settings(checkpoint=path, device="cpu")
    with pytest.raises(ModelConfigError, match=r"sam_tiny\.pth.*\(setting: LSMSEG_SAM_CHECKPOINT\)") as error:
        load_model(plan_model(settings), settings)
    cause = error.value.__cause__
    assert isinstance(cause, WeightsNotFoundError) and cause.part == "sam" and "LSMSEG" not in str(cause)


def test_the_model_status_names_the_checkpoint_file_but_not_where_it_is_kept(tmp_path):
    path = save_checkpoint(build_model("tiny"), tmp_path / "kept" / "here" / "tiny.safetensors")
    settings = Settings(checkpoint=path, device="cpu")
    _, status = load_model(plan_model(settings), settings)
    assert (status.name, status.source, status.device) == ("tiny", "checkpoint", "cpu")
    assert status.path == "tiny.safetensors"
    assert (status.cfm_k, status.prompts_per_class, status.random_weights) == (8, 2, False)
    assert "kept" not in status.model_dump_json()


# Engine -----------------------------------------------------------------------------------------------------
def _rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_engine_answers_the_smallest_image_of_a_group_first_and_later_groups_count_earlier_ones(
    tiny_model, tiny_text
):
    engine = Engine(tiny_model, Backend("torch", Segmenter(tiny_model, device="cpu")))
    jobs = [
        SegmentJob(_rgb(240, 200, 0), tiny_text, None),
        SegmentJob(_rgb(30, 20, 1), tiny_text, None),
        SegmentJob(_rgb(50, 40, 2), tiny_text, 3),  # another k: a second model call
    ]
    answers = list(engine.run(jobs))
    assert [index for index, _ in answers] == [1, 0, 2]
    outputs = [output for _, output in answers]
    assert all(isinstance(output, SegmentOutput) and output.batch_size == 3 for output in outputs)
    for (_, output), job in zip(sorted(answers, key=lambda answer: answer[0]), jobs, strict=True):
        alone = engine.segmenter.segment([job.image], job.text, k=job.top_k).results[0]
        assert (output.segmentation.label_map == alone.label_map).mean() > 0.999  # batched: float noise
    small, large, other_k = (output.timings for output in outputs)
    assert small["postprocess"] < large["postprocess"]  # the small one did not wait for the large label map
    assert other_k["clip"] > large["clip"]  # it waited for the first model call, and its own
    assert len(outputs[2].segmentation.selected) == 3


def test_a_failing_image_fails_alone_and_its_unanswered_neighbours_are_retried(tiny_model, tiny_text):
    segmenter = Segmenter(tiny_model, device="cpu")
    label_map = segmenter._label_map

    def breaks_on_odd_sizes(probs, classes, image, *rest):
        if image.shape[0] == 77:
            raise RuntimeError("this image's label map broke")
        return label_map(probs, classes, image, *rest)

    segmenter._label_map = breaks_on_odd_sizes  # type: ignore[method-assign]
    engine = Engine(tiny_model, Backend("torch", segmenter))
    sizes = [(20, 20), (77, 80), (200, 90)]
    jobs = [SegmentJob(_rgb(*size, seed), tiny_text, None) for seed, size in enumerate(sizes)]
    answers = list(engine.run(jobs))
    assert sorted(index for index, _ in answers) == [0, 1, 2]  # each answered once
    results = dict(answers)
    assert isinstance(results[1], RuntimeError) and "broke" in str(results[1])
    for index in (0, 2):
        assert isinstance(results[index], SegmentOutput)
        assert results[index].segmentation.label_map.shape == jobs[index].image.shape[:2]


# Batcher ----------------------------------------------------------------------------------------------------
def _started_batcher(run=None, **options: object) -> tuple[Batcher, list[list[int]]]:
    """A ready batcher whose batches multiply by 10 and are recorded (or are run by `run`)."""
    seen: list[list[int]] = []

    def times_ten(payloads, serve_cheaper):
        seen.append(list(payloads))
        return enumerate(payload * 10 for payload in payloads)

    def startup():
        return run or times_ten

    batcher = Batcher(metrics=Metrics(), **options)  # type: ignore[arg-type]
    batcher.start(startup)
    deadline = time.monotonic() + 5
    while batcher.state != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return batcher, seen


def test_batcher_fills_batches_refuses_overflow_and_skips_cancelled_jobs():
    batcher, seen = _started_batcher(max_batch=3, max_wait_s=0.3, queue_size=3)

    async def scenario() -> list[int]:
        jobs = [batcher.admit().submit(index) for index in range(3)]
        with pytest.raises(QueueFull) as full:
            batcher.admit()
        assert full.value.retry_after_s > 0 and "3 requests waiting" in full.value.message
        batcher.cancel(jobs[1])
        return [await jobs[0].future, await jobs[2].future]

    try:
        assert asyncio.run(scenario()) == [0, 20]
        assert seen == [[0, 2]]  # one batch, without the cancelled job
    finally:
        batcher.stop()


def test_a_lone_request_does_not_wait_for_company():
    batcher, seen = _started_batcher(max_batch=8, max_wait_s=5.0, queue_size=8)

    async def scenario() -> float:
        started = time.perf_counter()
        await batcher.admit().submit(1).future
        return time.perf_counter() - started

    try:
        assert asyncio.run(scenario()) < 1.0
        assert seen == [[1]]
    finally:
        batcher.stop()


def test_a_forming_batch_waits_for_requests_still_arriving():
    batcher, seen = _started_batcher(max_batch=8, max_wait_s=5.0, queue_size=8)

    async def scenario() -> list[int]:
        with batcher.admit() as place:
            place.arriving()  # a second request is decoded and about to be submitted
            first = batcher.admit().submit(1)
            await asyncio.sleep(0.2)
            second = place.submit(2)
        return [await first.future, await second.future]

    try:
        assert asyncio.run(scenario()) == [10, 20]
        assert seen == [[1, 2]]
    finally:
        batcher.stop()


def test_an_admitted_request_still_being_read_delays_no_batch():
    batcher, _ = _started_batcher(max_batch=8, max_wait_s=5.0, queue_size=8)

    async def scenario() -> tuple[float, int]:
        with batcher.admit():  # its body is still on the way: not decoded, so not arriving
            started = time.perf_counter()
            result = await batcher.admit().submit(1).future
            return time.perf_counter() - started, result

    try:
        seconds, result = asyncio.run(scenario())
        assert result == 10 and seconds < 1.0
        assert batcher.depth == 0  # the place was given back on leaving the block
    finally:
        batcher.stop()


def test_admitted_requests_count_against_the_queue_until_they_leave():
    batcher, _ = _started_batcher(max_batch=8, max_wait_s=0.0, queue_size=2)

    async def scenario() -> None:
        with batcher.admit(), batcher.admit(), pytest.raises(QueueFull):
            batcher.admit()
        batcher.admit().submit(1)  # both places were given back

    try:
        asyncio.run(scenario())
    finally:
        batcher.stop()


def _one_batch_of_two(batcher: Batcher) -> tuple[Job, Job]:
    """Payloads 1 and 2 queued so that they form one batch (the second was arriving when the first came)."""
    with batcher.admit() as place:
        place.arriving()
        first = batcher.admit().submit(1)
        second = place.submit(2)
    return first, second


def test_each_request_of_a_batch_is_answered_as_soon_as_its_own_result_is_out():
    second_answered = threading.Event()
    answered_while_running: list[bool] = []

    def slow_first(payloads, serve_cheaper):
        yield 1, payloads[1] * 10
        # The first job's result is still being made: the second's client has its answer already.
        answered_while_running.append(second_answered.wait(5))
        yield 0, payloads[0] * 10

    batcher, _ = _started_batcher(max_batch=2, max_wait_s=5.0, queue_size=2, run=slow_first)

    async def scenario() -> list[int]:
        first, second = _one_batch_of_two(batcher)
        result = await second.future
        second_answered.set()
        assert not first.future.done()
        return [await first.future, result]

    try:
        assert asyncio.run(scenario()) == [10, 20]
        assert answered_while_running == [True]
    finally:
        batcher.stop()


def test_cheaper_requests_overtake_a_running_batch_at_its_safe_points_and_equal_ones_do_not():
    queued = threading.Event()
    order: list[str] = []

    def large_label_map(payloads, serve_cheaper):
        if payloads[0] < 100:  # a small request: no steps
            order.append(f"small {payloads}")
            return enumerate(payloads)
        queued.wait(5)
        order.append("large: step 1")
        serve_cheaper(payloads[0])  # what it is doing costs its payload
        order.append("large: step 2")
        return enumerate(payloads)

    batcher, _ = _started_batcher(
        max_batch=8, max_wait_s=0.0, queue_size=8, run=large_label_map, cost=lambda payload: payload
    )

    async def scenario() -> None:
        large = batcher.admit().submit(500)
        await asyncio.sleep(0.1)  # the large one is running
        same = batcher.admit().submit(500)
        small = [batcher.admit().submit(10), batcher.admit().submit(20)]
        queued.set()
        await asyncio.gather(large.future, same.future, *(job.future for job in small))

    try:
        asyncio.run(scenario())
        # The two small ones ran inside the large batch, as one batch; the equal one waited its turn.
        assert order == ["large: step 1", "small [10, 20]", "large: step 2", "large: step 1", "large: step 2"]
    finally:
        batcher.stop()


def test_a_batch_that_fails_midway_keeps_the_answers_it_gave_and_fails_the_rest():
    def fails_after_one(payloads, serve_cheaper):
        yield 0, payloads[0] * 10
        raise RuntimeError("the second label map broke")

    def forgets_one(payloads, serve_cheaper):
        return [(0, payloads[0] * 10)]

    async def scenario(batcher: Batcher) -> tuple[int, BaseException | None]:
        first, second = _one_batch_of_two(batcher)
        results = await asyncio.gather(first.future, second.future, return_exceptions=True)
        return results[0], results[1]

    for run, message in ((fails_after_one, "the second label map broke"), (forgets_one, "gave no result")):
        batcher, _ = _started_batcher(max_batch=2, max_wait_s=5.0, queue_size=2, run=run)
        try:
            first_result, second_result = asyncio.run(scenario(batcher))
            assert first_result == 10
            assert isinstance(second_result, RuntimeError) and message in str(second_result)
        finally:
            batcher.stop()


def test_work_between_batches_alternates_with_batches():
    order: list[str] = []

    def record(payloads, serve_cheaper):
        order.append(f"batch {payloads[0]}")
        return enumerate(payloads)

    batcher, _ = _started_batcher(max_batch=1, max_wait_s=0.0, queue_size=8, run=record)

    async def scenario() -> None:
        gate = threading.Event()
        blocker = batcher.between_batches(gate.wait)  # holds the model thread until everything is queued
        await asyncio.sleep(0.1)
        jobs = [batcher.admit().submit(index) for index in range(3)]
        chunks = [
            batcher.between_batches(lambda index=index: order.append(f"chunk {index}")) for index in range(3)
        ]
        gate.set()
        await asyncio.gather(blocker, *(job.future for job in jobs), *chunks)

    try:
        asyncio.run(scenario())
        assert order == ["batch 0", "chunk 0", "batch 1", "chunk 1", "batch 2", "chunk 2"]
    finally:
        batcher.stop()


def test_batcher_reports_start_up_failure():
    def startup():
        raise FileNotFoundError("weights.pth is missing")

    batcher: Batcher = Batcher(max_batch=1, max_wait_s=0, queue_size=1, metrics=Metrics())
    batcher.start(startup)
    deadline = time.monotonic() + 5
    while batcher.state == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert batcher.state == "failed" and "weights.pth" in (batcher.error or "")

    with pytest.raises(ModelFailed) as error:
        batcher.admit()
    assert "weights.pth" in error.value.message
