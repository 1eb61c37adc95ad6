"""What every `gpt2-onnx` command shares: its parser's one-line usage errors, the one line an
error prints, writing to standard output, the extras a command needs, the engine-rows bound.

Imports nothing heavy: `gpt2-onnx --help` must not load onnxruntime, fastapi or ray.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gpt2_onnx import precisions
from gpt2_onnx.errors import GenerationOptionError, Gpt2OnnxError
from gpt2_onnx.option_registry import MAX_ROWS, flag_of

from . import settings

EXIT_ERROR, EXIT_USAGE, EXIT_BROKEN_PIPE = 1, 2, 141  # 141 = 128 + SIGPIPE


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with a usage error in one line (`gpt2-onnx: error: ... (see `PROG --help`)`), exit 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str):  # one line, not usage + message
        # prog is "gpt2-onnx" for the top level, "gpt2-onnx generate" for a sub-command
        print(f"gpt2-onnx: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class OutputError(Exception):
    """Standard output cannot take what a command prints (a full disk, /dev/full): the run ends."""


def error_line(error: Exception) -> str:
    """The one line an error prints; an option that would fix it is named as its flag (`--truncate left`)."""
    message = (
        error.spelled(lambda option, value: f"{flag_of(option)} {value}")
        if isinstance(error, GenerationOptionError)
        else str(error)
    )
    return f"gpt2-onnx: error: {message}"


def write(text: str) -> None:
    """Text on stdout at once (every command prints through this). A reader gone raises
    BrokenPipeError (main exits quietly); any other failure (no space left, an I/O error)
    ends the run with one line."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        discard_stdout()
        raise OutputError(f"cannot write the output to standard output: {e.strerror or e}") from None


def discard_stdout() -> None:
    """Point stdout at devnull, as the Python docs advise for SIGPIPE: what it still buffers
    cannot be written, and the interpreter's final flush must not fail and print a traceback."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# extra → (modules it brings that a command imports, how to install it)
EXTRAS = {
    "hub": (("onnx", "huggingface_hub"), "pip install 'gpt2-onnx[hub]'"),
    "check": (
        ("onnx", "huggingface_hub", "torch", "transformers"),
        "pip install 'gpt2-onnx[check]' (CPU-only torch: pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu first)",
    ),
    "serve": (("fastapi", "uvicorn", "prometheus_client"), "pip install 'gpt2-onnx[serve]'"),
}


def require(extra: str) -> None:
    """Import the extra's modules, or fail with a one-line error naming the extra to install."""
    modules, install = EXTRAS[extra]
    for module in modules:
        try:
            importlib.import_module(module)  # third-party modules, by the names in EXTRAS
        except ImportError:
            raise Gpt2OnnxError(f"this command needs the {extra} extra ({module} is missing): {install}") from None


def port_number(text: str) -> int:
    """A TCP port to bind (`serve`, `web`): 1-65535."""
    if not (text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {text!r}")
    return int(text)


def check_max_running(value: int) -> None:
    """--max-running (`serve`, `batch`): the rows an engine decodes at once, from 1 to the runtime's MAX_ROWS."""
    if value < 1:
        raise Gpt2OnnxError(f"--max-running must be ≥ 1, got {value}")
    if value > MAX_ROWS:
        raise Gpt2OnnxError(f"--max-running must be ≤ {MAX_ROWS} (rows an engine decodes at once), got {value}")


def add_model_arguments(parser: argparse.ArgumentParser, *, on_ray: bool, prefix_cache_mb: float | None) -> None:
    """The flags that say what a command loads (`settings.ModelSettings`), alike in every command;
    `prefix_cache_mb`: the command's default (None: the runtime's rule, on where the precision allows it)."""
    parser.add_argument(
        "--model", default=None, help="model directory or hub id (default: the registry's default model)"
    )
    parser.add_argument(
        "--precision",
        default=precisions.DEFAULT_PRECISION,
        choices=precisions.NAMES,
        help=(
            "model variant: " + "; ".join(line[2:].replace("`", "") for line in precisions.guide().splitlines())
        ).replace("%", "%%"),  # argparse formats help with %
    )
    per_replica = f", {settings.RAY_THREADS} per replica with --ray" if on_ray else ""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"intra-op threads, at most the machine's CPUs (default: available cores{per_replica})",
    )
    rule = f"; {settings.PREFIX_CACHE_RULE}" if prefix_cache_mb is None else ""
    parser.add_argument(
        "--prefix-cache-mb", type=float, default=prefix_cache_mb, help=f"{settings.PREFIX_CACHE_HELP}{rule})"
    )


def model_settings(args: argparse.Namespace) -> settings.ModelSettings:
    """What the flags of `add_model_arguments` ask a command to load."""
    return settings.ModelSettings(args.model, args.precision, args.threads, args.prefix_cache_mb)
