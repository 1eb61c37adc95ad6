"""`gpt2-onnx check MODEL_DIR --against SOURCE`: a model directory against its checkpoint in torch.

Needs the check extra (torch, transformers), imported when it runs; fails unless FP32 matches.
"""

from __future__ import annotations

import argparse

from ..console import require, write

HELP = "compare a model directory with its checkpoint in torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir")
    parser.add_argument("--against", required=True, metavar="SOURCE", help="checkpoint directory or hub id")


def run(args: argparse.Namespace) -> int:
    require("check")
    from gpt2_onnx.export import parity

    reports = parity.check_model(args.model_dir, args.against)
    for report in reports:
        write(report.line() + "\n")
    parity.require_fp32_parity(reports)
    return 0
