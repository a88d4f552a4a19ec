"""CAT-Seg's own class setting against LSMSeg's CFM on the imported CAT-Seg architecture, in one run.

Random-init `catseg-vit-b16` (full size; the architecture is what costs time): CAT-Seg refines every class up
to 256 (k = 256, class attention padded to 256), LSMSeg's operating point keeps k = 32 (the same pads, added
in closed form). Per stage: CLIP (once per image, shared), CFM selection, refinement + decoder. A last table
shows what the closed-form pads cost: the same refinement with padding switched off.

    python benchmarks/catseg_latency.py                      # CPU, fp32
    python benchmarks/catseg_latency.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from cfm_latency import DTYPES, device_name, timed  # the sibling script's median-of-repeats timer

from model import build_model, get_config

RESULTS = Path(__file__).parent / "results" / "catseg_latency.json"
SETTINGS = {"catseg": 256, "lsmseg": 32}  # name -> k


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="catseg-vit-b16")
    parser.add_argument("--classes", type=int, nargs="+", default=[32, 171, 847])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    device = torch.device(args.device)
    config = get_config(args.preset)
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    size = config.image_size
    image = torch.rand(1, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")

    def head(text: torch.Tensor, k: int) -> tuple[float, float, int]:
        cfm_s, selection = timed(lambda: model.select(clip.dense.float(), text, k), device, args.repeats)
        refine_s, _ = timed(
            lambda: model.refine(clip.dense, guidance, selection, (size, size)), device, args.repeats
        )
        return cfm_s, refine_s, int(selection.indices.shape[1])

    rows, padding_rows = [], []
    with torch.inference_mode(), autocast:
        clip_s, clip = timed(lambda: model.clip_features(image), device, args.repeats)
        guidance = model.fuse(clip, None)
        for num_classes in args.classes:
            text = torch.nn.functional.normalize(
                torch.randn(num_classes, config.prompts_per_class, config.clip.embed_dim, device=device),
                dim=-1,
            )
            for setting, k in SETTINGS.items():
                cfm_s, refine_s, refined = head(text, k)
                rows.append(
                    {
                        "classes": num_classes,
                        "setting": setting,
                        "k": k,
                        "refined_classes": refined,
                        "clip_s": clip_s,
                        "cfm_s": cfm_s,
                        "refine_s": refine_s,
                        "total_s": clip_s + cfm_s + refine_s,
                    }
                )
                print(f"  {num_classes} classes, {setting} (k={k}): {rows[-1]['total_s']:.3f} s")
        pad_len = config.head.class_pad_len
        text = torch.nn.functional.normalize(torch.randn(32, 1, config.clip.embed_dim, device=device), dim=-1)
        for pads in (pad_len, 0):
            for layer in model.layers:
                layer.classes.pad_len = pads  # the refinement reads it per call; weights unchanged
            padding_rows.append({"pad_len": pads, "classes": 32, "refine_s": head(text, 32)[1]})

    by_key = {(r["classes"], r["setting"]): r for r in rows}
    summary = {
        f"speedup_{classes}_classes": {
            key: by_key[(classes, "catseg")][key] / by_key[(classes, "lsmseg")][key]
            for key in ("refine_s", "total_s")
        }
        for classes in args.classes
    }
    summary["pad_overhead_refine"] = padding_rows[0]["refine_s"] / padding_rows[1]["refine_s"]
    report = {
        "preset": args.preset,
        "device": device_name(device),
        "dtype": args.dtype,
        "image_size": size,
        "settings": SETTINGS,
        "rows": rows,
        "padding": padding_rows,
        "summary": summary,
    }
    print(f"\n{args.preset} on {device_name(device)}, {args.dtype}, CLIP {size}², pad_len {pad_len}")
    print("| classes | setting | k | refined | clip ms | cfm ms | refine ms | total ms |\n|" + "---|" * 8)
    for r in rows:
        cells = [r["classes"], r["setting"], r["k"], r["refined_classes"]]
        cells += [f"{r[key] * 1e3:.1f}" for key in ("clip_s", "cfm_s", "refine_s", "total_s")]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print("\n| pad_len | classes | refine ms |\n|---|---|---|")
    for r in padding_rows:
        print(f"| {r['pad_len']} | {r['classes']} | {r['refine_s'] * 1e3:.1f} |")
    for classes in args.classes:
        ratios = summary[f"speedup_{classes}_classes"]
        refine, total = ratios["refine_s"], ratios["total_s"]
        print(f"{classes} classes: k=32 is {refine:.2f}x faster in refinement, {total:.2f}x in total")
    print(f"closed-form pads cost {summary['pad_overhead_refine']:.3f}x the unpadded refinement")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
