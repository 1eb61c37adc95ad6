"""`gpt2-onnx batch INPUT OUTPUT`: generate for every row of a JSONL or Parquet file, locally
(`apps/batch.py`) or on Ray Data (`--ray`, `apps/ray_data.py`), then a one-line summary on stderr.

A row's options are option names (unknown ones fail that row); the command line's option flags
(`apps/option_flags.py`) apply to every row that does not set its own. A JSONL file in OpenAI's batch
format (`apps/batch_openai.py`) is answered in it, each line's body read as the server reads it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt2_onnx.errors import Gpt2OnnxError

from .. import settings
from ..batch_io import DEFAULT_MAX_RUNNING, DEFAULT_RAY_BATCH
from ..console import add_model_arguments, check_max_running, model_settings
from ..option_flags import add_option_flags, options_given

HELP = "generate for every row of a JSONL or Parquet file, or every request of an OpenAI batch file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        type=Path,
        help="JSONL (one object per line: prompt, optional id and options; or OpenAI's batch lines: custom_id, "
        "method, url, body) or Parquet",
    )
    parser.add_argument(
        "output",
        type=Path,
        help="the rows with text, token_ids, finish_reason, usage (or error); same format (OpenAI's output lines "
        "for an OpenAI batch file)",
    )
    add_model_arguments(parser, on_ray=True, prefix_cache_mb=None)
    parser.add_argument(
        "--max-running", type=int, default=DEFAULT_MAX_RUNNING, help="rows decoded together (per replica with --ray)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip the input lines OUTPUT already answers and append the rest"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray Data: a new local cluster, or the cluster at ADDRESS (e.g. auto, ray://host:10001)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=settings.DEFAULT_REPLICAS,
        help="with --ray: engines (actors), each with --threads cores",
    )
    parser.add_argument("--ray-batch", type=int, default=DEFAULT_RAY_BATCH, help="with --ray: rows per Ray Data batch")
    add_option_flags(parser, "the row's, else the model's")


def run(args: argparse.Namespace) -> int:
    check_max_running(args.max_running)
    for name in ("replicas", "ray_batch"):
        if getattr(args, name) < 1:
            raise Gpt2OnnxError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.input.resolve() == args.output.resolve():
        raise Gpt2OnnxError(f"INPUT and OUTPUT are the same file ({args.input}); write the results elsewhere")
    job_options = options_given(args)
    if args.ray is not None:
        from ..ray_data import run_ray

        summary = run_ray(
            args.model,
            args.precision,
            args.input,
            args.output,
            job_options,
            address=None if args.ray == "local" else args.ray,
            replicas=args.replicas,
            threads=args.threads,
            max_running=args.max_running,
            batch_size=args.ray_batch,
            resume=args.resume,
            progress=not args.no_progress,
            prefix_cache_mb=args.prefix_cache_mb,
        )
    else:
        from ..batch import run_local

        generator = model_settings(args).load()
        summary = run_local(
            generator,
            args.input,
            args.output,
            job_options,
            max_running=args.max_running,
            resume=args.resume,
            progress=not args.no_progress,
        )
    print(
        f"gpt2-onnx: batch: {summary.written} rows written ({summary.errors} with errors, {summary.skipped} already "
        f"done), {summary.new_tokens} new tokens in {summary.seconds:.1f} s ({summary.tokens_per_s:.1f} tokens/s)",
        file=sys.stderr,
    )
    return 0
