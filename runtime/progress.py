"""Progress lines on stderr, shared by the CLI and the hub's first-use export."""

from __future__ import annotations

import sys


def print_progress(message: str) -> None:
    """One line of progress on stderr, as the CLI shows it."""
    print(f"gpt2-onnx: {message}", file=sys.stderr, flush=True)
