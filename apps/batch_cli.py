"""`gpt2-onnx batch INPUT OUTPUT`: the command line of batch jobs (local, or `--ray`).

`register(subparsers)` adds the sub-command to the `gpt2-onnx` parser; the parsed
arguments carry their handler as `args.run`. Nothing heavy is imported until it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_RAY_BATCH = 64  # rows per Ray Data batch: each actor runs one batch through its engine at a time


def _cli():
    """The `gpt2-onnx` CLI module (its generate option table is shared); imported late, as it imports this."""
    from gpt2_onnx.apps import cli

    return cli


def register(subparsers) -> None:
    """Add `batch` to the `gpt2-onnx` sub-commands."""
    from gpt2_onnx import precisions

    from .batch_io import DEFAULT_MAX_RUNNING

    p = subparsers.add_parser("batch", help="generate for every row of a JSONL or Parquet file (locally or on Ray)")
    p.add_argument("input", type=Path, help="JSONL (one object per line: prompt, optional id and options) or Parquet")
    p.add_argument("output", type=Path, help="the rows with text, token_ids, finish_reason, usage (or error); same format")
    p.add_argument("--model", default=None, help="model directory or hub id (default: the registry's default model)")
    p.add_argument("--precision", default=precisions.DEFAULT_PRECISION, choices=precisions.NAMES, help="model variant")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (per replica with --ray; default: available cores, 1 with --ray)")
    p.add_argument("--max-running", type=int, default=DEFAULT_MAX_RUNNING, help="rows decoded together (per replica with --ray)")
    p.add_argument("--resume", action="store_true", help="skip the input lines OUTPUT already answers and append the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a new local cluster, or the cluster at ADDRESS (e.g. auto, ray://host:10001)")
    p.add_argument("--replicas", type=int, default=1, help="with --ray: engines (actors), each with --threads cores")
    p.add_argument("--ray-batch", type=int, default=DEFAULT_RAY_BATCH, help="with --ray: rows per Ray Data batch")
    p.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None, help="sample (default: the model's)")
    for flag, dest, kind, text in _cli().GENERATE_OPTIONS:
        p.add_argument(flag, dest=dest, type=kind, default=None, help=f"{text} (default: the row's, else the model's)")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable; default: the model's)")
    p.add_argument("--bad-word", dest="bad_words", action="append", default=None, help="never generate this text (repeatable)")
    p.add_argument("--truncate", choices=["left"], default=None, help="drop a prompt's oldest tokens to fit the context")
    p.add_argument("--context-overflow", choices=["error", "slide"], default=None, help="slide: generate past the model's positions")
    p.set_defaults(run=run)


def job_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generation options given on the command line (they apply to every row that does not set its own)."""
    return _cli()._options(args)


def run(args: argparse.Namespace) -> int:
    """The `batch` handler: the job, then a one-line summary on stderr."""
    from gpt2_onnx.errors import Gpt2OnnxError
    from gpt2_onnx.options import MAX_ROWS

    for name in ("max_running", "replicas", "ray_batch"):
        if getattr(args, name) < 1:
            raise Gpt2OnnxError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.max_running > MAX_ROWS:  # the engine's rows: the runtime's bound on rows decoded at once
        raise Gpt2OnnxError(f"--max-running must be ≤ {MAX_ROWS} (rows an engine decodes at once), "
                            f"got {args.max_running}")
    if args.input.resolve() == args.output.resolve():
        raise Gpt2OnnxError(f"INPUT and OUTPUT are the same file ({args.input}); write the results elsewhere")
    if args.ray is not None:
        from .ray_data import run_ray

        summary = run_ray(args.model, args.precision, args.input, args.output, job_options(args),
                          address=None if args.ray == "local" else args.ray, replicas=args.replicas,
                          threads=args.threads or 1, max_running=args.max_running, batch_size=args.ray_batch,
                          resume=args.resume, progress=not args.no_progress)
    else:
        from gpt2_onnx.generator import Generator

        from .batch import run_local

        generator = Generator.load(args.model, precision=args.precision, threads=args.threads)
        summary = run_local(generator, args.input, args.output, job_options(args), max_running=args.max_running,
                            resume=args.resume, progress=not args.no_progress)
    print(f"gpt2-onnx: batch: {summary.written} rows written ({summary.errors} with errors, {summary.skipped} already done), "
          f"{summary.new_tokens} new tokens in {summary.seconds:.1f} s ({summary.tokens_per_s:.1f} tokens/s)", file=sys.stderr)
    return 0
