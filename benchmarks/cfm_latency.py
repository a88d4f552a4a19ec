"""Latency vs vocabulary size, with the Category Filtering Module on (k = 32) and off (every class refined).

Random-init `vit-b16-sam-l` (the architecture is what costs time, not the weights), one image, text embeddings
precomputed. The image stages (CLIP, SAM + fusion) do not depend on the vocabulary, so they are timed once and
added to every row; the class-dependent stages (CFM, refinement + decoder) are timed per row.

    python benchmarks/cfm_latency.py                      # CPU, fp32
    python benchmarks/cfm_latency.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lsmseg.model import build_model, get_config

RESULTS = Path(__file__).parent / "results" / "cfm_latency.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """Median seconds over `repeats` runs after one warm-up, and the last result."""
    result = fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="vit-b16-sam-l")
    parser.add_argument("--classes", type=int, nargs="+", default=[32, 171, 847, 2000])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--sam-size", type=int, default=None, help="SAM input side (preset default: 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--class-chunk", type=int, default=128, help="classes per chunk when CFM is off")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    config = get_config(args.preset)
    if args.sam_size:
        config.sam.input_size = args.sam_size
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    size = config.image_size
    image = torch.rand(1, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")

    rows = []
    with torch.inference_mode(), autocast:
        clip_s, clip = timed(lambda: model.clip_features(image), device, args.repeats)
        sam_s, guidance = timed(lambda: model.fuse(clip, model.sam_features(image)), device, args.repeats)
        for num_classes in args.classes:
            text = torch.nn.functional.normalize(
                torch.randn(num_classes, config.prompts_per_class, config.clip.embed_dim, device=device),
                dim=-1,
            )
            for cfm in (True, False):
                k = args.k if cfm else num_classes
                chunk = None if cfm else args.class_chunk
                cfm_s, selection = timed(
                    lambda t=text, k=k: model.select(clip.dense.float(), t, k), device, args.repeats
                )
                refine_s, _ = timed(
                    lambda s=selection, c=chunk: model.refine(clip.dense, guidance, s, (size, size), c),
                    device,
                    args.repeats,
                )
                rows.append(
                    {
                        "classes": num_classes,
                        "cfm": cfm,
                        "refined_classes": int(selection.indices.shape[1]),
                        "clip_s": clip_s,
                        "sam_s": sam_s,
                        "cfm_s": cfm_s,
                        "refine_s": refine_s,
                        "head_s": cfm_s + refine_s,
                        "total_s": clip_s + sam_s + cfm_s + refine_s,
                    }
                )
                print(f"  {num_classes} classes, CFM {'on' if cfm else 'off'}: {rows[-1]['total_s']:.3f} s")

    def ratio(cfm: bool, key: str, big: int) -> float | None:
        by_classes = {r["classes"]: r[key] for r in rows if r["cfm"] is cfm}
        if big not in by_classes or min(args.classes) not in by_classes:
            return None
        return by_classes[big] / by_classes[min(args.classes)]

    summary = {
        f"{key}_ratio_{big}_vs_{min(args.classes)}_cfm_{'on' if cfm else 'off'}": ratio(cfm, key, big)
        for big in args.classes[1:]
        for cfm in (True, False)
        for key in ("total_s", "head_s")
    }
    on = device_name(device)
    report = {
        "preset": args.preset,
        "device": on,
        "dtype": args.dtype,
        "image_size": size,
        "sam_input_size": config.sam.input_size,
        "k": args.k,
        "rows": rows,
        "summary": summary,
    }
    sam_size = config.sam.input_size
    print(f"\n{args.preset} on {on}, {args.dtype}, CLIP {size}², SAM {sam_size}², k={args.k}")
    header = "| classes | CFM | refined | clip ms | sam ms | cfm ms | refine ms | total ms |"
    print(header + "\n|" + "---|" * 8)
    for r in rows:
        cells = [r["classes"], "on" if r["cfm"] else "off", r["refined_classes"]]
        cells += [f"{r[key] * 1e3:.1f}" for key in ("clip_s", "sam_s", "cfm_s", "refine_s", "total_s")]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    for key, value in summary.items():
        print(f"{key}: {value:.3f}" if value is not None else f"{key}: n/a")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
