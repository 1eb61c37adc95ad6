"""`gpt2-onnx export [SOURCE] OUT_DIR`: a checkpoint (directory or hub id) → an ONNX model directory.

Needs the hub extra (onnx, huggingface_hub), imported when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2_onnx import precisions
from gpt2_onnx.errors import Gpt2OnnxError
from gpt2_onnx.progress import print_progress

from ..console import require, write

HELP = "checkpoint (directory or hub id) → ONNX model directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="[SOURCE] OUT_DIR",
        help="checkpoint directory or hub id (default: the registry's default model), then the output directory",
    )
    parser.add_argument(
        "--quantize",
        action="append",
        choices=precisions.QUANTIZED,
        default=[],
        help="also write this variant (repeatable)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing gpt2-onnx model directory at OUT_DIR (never any other directory)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with transformers + torch")


def run(args: argparse.Namespace) -> int:
    from gpt2_onnx.models import default_model

    require("hub")
    from gpt2_onnx import export

    if len(args.paths) > 2:
        raise Gpt2OnnxError(f"export takes [SOURCE] OUT_DIR, got {len(args.paths)} paths")
    if len(args.paths) == 1:
        out = args.paths[0]
        if (Path(out).expanduser() / "config.json").is_file():
            raise Gpt2OnnxError(
                f"export got one path, {out}, which is a checkpoint; pass an OUT_DIR: gpt2-onnx export {out} OUT_DIR"
            )
        source = default_model()
        print_progress(f"no SOURCE given: exporting the default model {source} into {out}")
    else:
        source, out = args.paths
    path = export.export_model(
        source, out, quantize=tuple(args.quantize), force=args.force, check=not args.no_check, progress=print_progress
    )
    write(f"{path}\n")
    return 0
