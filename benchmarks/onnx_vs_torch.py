"""Segmenter latency: the torch backend vs the onnxruntime backend (LSMSEG_BACKEND=onnx), same inputs.

Each model is exported once (the export time is reported too); then both Segmenters segment the same images
with the same vocabulary, batch 1 and 4, after warm-up runs. Timed: one `segment()` call (resize, image graph,
label maps at the photo's size); text encoding is not, since both backends run it in torch and cache it.

    python benchmarks/onnx_vs_torch.py                        # tiny, and the demo checkpoint when present
    python benchmarks/onnx_vs_torch.py --models tiny demo --threads 1   # presets (seeded random weights)
    python benchmarks/onnx_vs_torch.py --device cuda          # torch on the GPU, onnxruntime's CUDA provider
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from lsmseg.model import LSMSeg, Segmenter, build_model, load_checkpoint
from lsmseg.model.onnx import OnnxSegmenter, export_onnx

ROOT = Path(__file__).resolve().parent.parent
DEMO_CHECKPOINT = "checkpoints/demo.safetensors"
RESULTS = Path(__file__).parent / "results" / "onnx_vs_torch.json"
PHOTO = (480, 640)  # height, width of the test images: label maps come back at this size


def load(name: str) -> LSMSeg | None:
    """A checkpoint (a .safetensors path; None when missing) or a preset with seeded random weights (latency
    does not depend on the weights)."""
    if name.endswith(".safetensors"):
        path = ROOT / name
        return load_checkpoint(path, "cpu") if path.is_file() else None
    torch.manual_seed(0)
    return build_model(name).eval()


def latencies(
    backends: dict[str, Segmenter], images: list[np.ndarray], text: torch.Tensor, runs: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict]:
    """Seconds per call for each backend, seconds of it in the model (all but label-map post-processing), and
    each one's last result. The backends take turns run by run, so a busy neighbour slows both alike."""
    results = {name: segmenter.segment(images, text) for name, segmenter in backends.items()}
    for _ in range(warmup - 1):
        for segmenter in backends.values():
            segmenter.segment(images, text)
    samples: dict[str, list[float]] = {name: [] for name in backends}
    graph: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(runs):
        for name, segmenter in backends.items():
            start = time.perf_counter()
            results[name] = segmenter.segment(images, text)
            samples[name].append(time.perf_counter() - start)
            graph[name].append(sum(s for stage, s in results[name].timings.items() if stage != "postprocess"))
    return samples, graph, results


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000}


def bench_model(name: str, model: LSMSeg, args: argparse.Namespace, workdir: Path) -> list[dict]:
    config = model.config
    start = time.perf_counter()
    graph = export_onnx(model, workdir / f"{name}.onnx")
    export_s = time.perf_counter() - start
    backends = {
        "torch": Segmenter(model, device=args.device),
        "onnxruntime": OnnxSegmenter(model, graph, threads=args.threads),
    }
    providers = backends["onnxruntime"].providers
    backends["torch"].model.to(args.device)  # OnnxSegmenter moved the shared model to the CPU
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (*PHOTO, 3), dtype=np.uint8) for _ in range(max(args.batches))]
    generator = torch.Generator().manual_seed(0)
    shape = (args.classes, config.prompts_per_class, config.clip.embed_dim)
    text = torch.nn.functional.normalize(torch.randn(shape, generator=generator), dim=-1)
    rows = []
    for batch in args.batches:
        samples, graph, results = latencies(backends, photos[:batch], text, args.runs, args.warmup)
        pairs = zip(results["torch"].results, results["onnxruntime"].results, strict=True)
        agreement = float(np.mean([np.mean(a.label_map == b.label_map) for a, b in pairs]))
        for backend, segmenter in backends.items():
            rows.append(
                {
                    "model": name,
                    "backend": backend,
                    "batch": batch,
                    **summary(samples[backend]),
                    "per_image_ms": statistics.median(samples[backend]) * 1000 / batch,
                    "model_median_ms": statistics.median(graph[backend]) * 1000,
                    "providers": providers if backend == "onnxruntime" else [],
                    "torch_dtype": str(segmenter.dtype) if backend == "torch" else "float32",
                    "label_map_agreement": agreement,
                    "export_s": round(export_s, 1),
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | batch | backend | median ms | p95 ms | ms / image | model part, median ms | vs torch "
        "| equal label pixels |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    baseline = {(r["model"], r["batch"]): r["median_ms"] for r in rows if r["backend"] == "torch"}
    for row in rows:
        speedup = baseline[row["model"], row["batch"]] / row["median_ms"]
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['backend']} | {row['median_ms']:.1f} | "
            f"{row['p95_ms']:.1f} | {row['per_image_ms']:.1f} | {row['model_median_ms']:.1f} | "
            f"{speedup:.2f}× | "
            f"{row['label_map_agreement']:.4%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", default=["tiny", DEMO_CHECKPOINT], help="presets, or .safetensors checkpoints"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--classes", type=int, default=20, help="vocabulary size (above the CFM's k)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="torch's device; onnxruntime takes CUDA when it can")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of both (default: all cores)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            model = load(name)
            if model is None:
                skipped.append(f"{name} is missing")
                continue
            print(f"{name}: exporting and timing …", flush=True)
            rows.extend(bench_model(Path(name).name, model, args, Path(workdir)))
    print(table(rows))
    for line in skipped:
        print("skipped", line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    report = {"settings": settings, "machine": machine, "photo": PHOTO, "rows": rows, "skipped": skipped}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
