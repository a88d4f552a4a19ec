"""ONNX export (image graph + CFM + head): onnxruntime matches torch and serves the Segmenter API."""

import numpy as np
import onnxruntime
import pytest
import torch

from lsmseg.model import LSMSeg, Segmenter, UnsupportedK
from lsmseg.model.onnx import OnnxSegmenter


def run(path, images: torch.Tensor, text: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(None, {"images": images.numpy(), "text": text.numpy()}))


@pytest.mark.parametrize(("batch", "classes"), [(1, 5), (3, 20), (2, 8)])
def test_onnxruntime_matches_torch_for_any_batch_and_class_count(
    tiny_model: LSMSeg, tiny_onnx, batch, classes
):
    generator = torch.Generator().manual_seed(batch * 100 + classes)
    images = torch.rand(batch, 3, 64, 64, generator=generator)
    text = torch.nn.functional.normalize(torch.randn(classes, 2, 32, generator=generator), dim=-1)
    logits, indices = run(tiny_onnx, images, text)
    with torch.no_grad():
        expected = tiny_model(images, text, return_selection=True)
    kept = min(classes, tiny_model.config.cfm_k)  # CFM's top-k is inside the graph
    assert logits.shape == (batch, kept, 64, 64) and indices.shape == (batch, kept)
    np.testing.assert_array_equal(indices, expected.indices.numpy())
    assert np.abs(logits - expected.logits.numpy()).max() <= 1e-3


def test_onnx_segmenter_gives_the_torch_label_maps(tiny_model: LSMSeg, tiny_onnx, tiny_text) -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    ]
    vocabularies = [tiny_text, tiny_text[[2, 3, 5]]]
    onnx_segmenter = OnnxSegmenter(tiny_model, tiny_onnx, providers=["CPUExecutionProvider"])
    assert onnx_segmenter.providers == ["CPUExecutionProvider"]
    ours = onnx_segmenter.segment(images, vocabularies)
    theirs = Segmenter(tiny_model, device="cpu").segment(images, vocabularies)
    for a, b in zip(ours.results, theirs.results, strict=True):
        np.testing.assert_array_equal(a.label_map, b.label_map)
        np.testing.assert_array_equal(a.selected, b.selected)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    assert set(ours.timings) == {"onnx", "postprocess"}
    k = tiny_model.config.cfm_k
    onnx_segmenter.check_k(None)
    onnx_segmenter.check_k(k)
    with pytest.raises(UnsupportedK, match=f"keeps k={k} classes, not 3") as error:
        onnx_segmenter.segment(images[:1], tiny_text, k=3)
    assert (error.value.k, error.value.graph_k) == (3, k)
    Segmenter(tiny_model, device="cpu").check_k(3)  # torch runs any k


def test_default_providers_prefer_cuda_and_fall_back_to_cpu(tiny_model: LSMSeg, tiny_onnx) -> None:
    segmenter = OnnxSegmenter(tiny_model, tiny_onnx)
    # onnxruntime-gpu lists CUDA even without a GPU; the segmenter asks for it only where torch sees one.
    assert segmenter.providers[-1] == "CPUExecutionProvider"
    if not torch.cuda.is_available():
        assert "CUDAExecutionProvider" not in segmenter.providers


def test_a_conv_stem_clip_exports_and_matches_torch(tmp_path) -> None:
    from lsmseg.model import build_model, get_config
    from lsmseg.model.onnx import export_onnx

    config = get_config("tiny")
    config.clip.conv_stem = (8, 16, 32)  # the demo CLIP's kind of patch embedding
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = export_onnx(model, tmp_path / "stem.onnx")
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    text = torch.nn.functional.normalize(torch.randn(10, 2, 32, generator=generator), dim=-1)
    logits, indices = run(path, images, text)
    with torch.no_grad():
        expected = model(images, text, return_selection=True)
    np.testing.assert_array_equal(indices, expected.indices.numpy())
    assert np.abs(logits - expected.logits.numpy()).max() <= 1e-3
