"""The interactive prompt of `gpt2-onnx generate` on a terminal.

Lines are read with `input()`, so the standard library's `readline` (where the platform
has it) gives line editing and history. Ctrl-C while an answer is generated cancels that
answer and returns to the prompt; Ctrl-C twice in a row at the prompt, or Ctrl-D, quits
with exit code 0 (leaving the prompt is the normal way out). An error in one prompt (too
long, not valid UTF-8) is reported in one line and the prompt comes back; a blank line is
no prompt (as in a file of prompts).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from gpt2_onnx.errors import Gpt2OnnxError

from .console import error_line

PROMPT = "> "


def interactive_loop(answer: Callable[[str], None]) -> int:
    """Read lines until the user quits; `answer` prints one line's result (and skips a blank one)."""
    try:
        import readline  # noqa: F401  (imported for its effect: input() edits lines, keeps history)
    except ImportError:  # not built on every platform
        pass
    armed = False  # the previous key at the prompt was Ctrl-C: another one quits
    while True:
        try:
            line = _read_line()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            if armed:
                print(file=sys.stderr)
                return 0
            armed = True
            print("\n(Ctrl-C again or Ctrl-D to quit)", file=sys.stderr, flush=True)
            continue
        armed = False
        try:
            answer(line)
        except KeyboardInterrupt:
            print(flush=True)  # the cancelled answer ends its line; the prompt comes back
        except Gpt2OnnxError as e:
            print(error_line(e), file=sys.stderr, flush=True)


def _read_line() -> str:
    # input() writes its prompt to stdout, which may be a file: then the prompt goes to stderr
    if sys.stdout.isatty():
        return input(PROMPT)
    print(PROMPT, end="", file=sys.stderr, flush=True)
    return input()
