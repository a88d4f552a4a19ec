"""CAT-Seg's own class setting against LSMSeg's CFM on the imported CAT-Seg architecture, in one run.

Random-init `catseg-vit-b16` (full size; the architecture is what costs time): CAT-Seg refines every class up
to 256 (k = 256, class attention padded to 256), LSMSeg's operating point keeps k = 32 (the same pads, added
in closed form). Per stage: CLIP (once per image, shared), CFM selection, refinement + decoder. A last table
shows what the closed-form pads cost: one class-attention layer with padding on and off, timed alternately.

    python benchmarks/catseg_latency.py                      # CPU, fp32
    python benchmarks/catseg_latency.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from cfm_latency import DTYPES, device_name, timed  # the sibling script's median-of-repeats timer

from lsmseg.model import build_model, get_config

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

    def head(text: torch.Tensor, k: int, repeats: int = args.repeats) -> tuple[float, float, int]:
        cfm_s, selection = timed(lambda: model.select(clip.dense.float(), text, k), device, repeats)
        refine_s, _ = timed(
            lambda: model.refine(clip.dense, guidance, selection, (size, size)), device, repeats
        )
        return cfm_s, refine_s, int(selection.indices.shape[1])

    rows = []
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
        # One class-attention layer with pads on and off, alternately (load from elsewhere on the machine then
        # hits both alike), on the shapes of 32 refined classes.
        pad_len, grid = config.head.class_pad_len, config.grid_size
        layer = model.layers[0].classes
        tokens = torch.randn(1, 32, grid, grid, config.head.hidden_dim, device=device)
        text_guidance = torch.randn(1, 32, config.head.guidance_dim, device=device)
        mask = torch.ones(1, 32, dtype=torch.bool, device=device)
        samples: dict[int, list[float]] = {pad_len: [], 0: []}
        for _ in range(3 * args.repeats):
            for pads in samples:
                layer.pad_len = pads  # read per call; the weights stay the same
                samples[pads].append(timed(lambda: layer(tokens, text_guidance, mask), device, 1)[0])
        layer.pad_len = pad_len
        padding_rows = [
            {"pad_len": pads, "classes": 32, "class_layer_s": statistics.median(times)}
            for pads, times in samples.items()
        ]

    by_key = {(r["classes"], r["setting"]): r for r in rows}
    summary = {
        f"speedup_{classes}_classes": {
            key: by_key[(classes, "catseg")][key] / by_key[(classes, "lsmseg")][key]
            for key in ("refine_s", "total_s")
        }
        for classes in args.classes
    }
    summary["pad_overhead_class_layer"] = padding_rows[0]["class_layer_s"] / padding_rows[1]["class_layer_s"]
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
    print("\n| pad_len | classes | class-attention layer ms |\n|---|---|---|")
    for r in padding_rows:
        print(f"| {r['pad_len']} | {r['classes']} | {r['class_layer_s'] * 1e3:.1f} |")
    for classes in args.classes:
        ratios = summary[f"speedup_{classes}_classes"]
        refine, total = ratios["refine_s"], ratios["total_s"]
        print(f"{classes} classes: k=32 is {refine:.2f}x faster in refinement, {total:.2f}x in total")
    print(f"closed-form pads: {summary['pad_overhead_class_layer']:.3f}x the unpadded class-attention layer")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
