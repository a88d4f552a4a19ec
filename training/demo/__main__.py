"""`python -m lsmseg.training.demo`: the command line of the demo pipeline (training/demo/pipeline.py)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import lsmseg.training.demo
from lsmseg.training.demo.pipeline import DEMO_CHECKPOINT, REPORT_DIR, ROOT, DemoConfig, run
from lsmseg.training.demo.report import markdown_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lsmseg.training.demo",
        description=lsmseg.training.demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=DEMO_CHECKPOINT, help="checkpoint to write")
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR, help="report and figure folder")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "demo", help="intermediate files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--init",
        type=Path,
        help="reuse the pretrained backbones of an earlier run (its work dir's init.safetensors) instead of "
        "pretraining again; it must come from the same pretraining settings",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = DemoConfig(seed=args.seed, threads=args.threads)
    report = run(
        config, args.output, args.report_dir, args.work_dir, progress=not args.no_progress, init=args.init
    )
    print(markdown_report(report))


if __name__ == "__main__":
    main()
