"""`gpt2-onnx` command line: the table of sub-commands, and `main`.

A thin layer over the Python API: each sub-command is a module of `apps/commands/` (its
`HELP`, `add_arguments` and `run`). Errors are one line on stderr and a non-zero exit: 1 for
bad input (or output that cannot be written: a full disk), 2 for usage, 128 + N for signal N
(130 for Ctrl-C), 141 when the reader of stdout went away (`| head`), never a traceback.
Nothing heavy is imported before `main` runs: Ctrl-C while onnxruntime loads is handled like
Ctrl-C during a command. `export` imports the hub extra (onnx, huggingface_hub) and `check`
the check extra (torch, transformers) only when they run, `serve` the serve extra (fastapi,
uvicorn, prometheus_client).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from gpt2_onnx import __version__
from gpt2_onnx.errors import Gpt2OnnxError

from .commands import batch, bench, check, export, generate, serve, web
from .console import EXIT_BROKEN_PIPE, EXIT_ERROR, OutputError, Parser, discard_stdout, error_line

COMMANDS = {  # name → its module, in the order `gpt2-onnx --help` lists them
    "export": export,
    "check": check,
    "generate": generate,
    "batch": batch,
    "bench": bench,
    "serve": serve,
    "web": web,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gpt2-onnx", description="Fast, torch-free GPT-2 generation on the CPU.")
    parser.add_argument("--version", action="version", version=f"gpt2-onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command].run(args)
    except (Gpt2OnnxError, OutputError) as e:
        print(error_line(e), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal during export (errors.Interrupted)
        print(file=sys.stderr)  # the shell's next prompt starts on its own line, after "^C"
        return 128 + getattr(e, "signum", signal.SIGINT)
    except BrokenPipeError:  # the reader left (`| head`)
        discard_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
