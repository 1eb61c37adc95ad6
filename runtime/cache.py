"""The runtime's cache: `$GPT2_ONNX_CACHE` (default `~/.cache/gpt2-onnx/`).

It holds hub ids exported on first use (`cached_dir`), the record of verified checksums
(`gpt2_onnx.checksums`) and the benchmarks' checkpoints and artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache directory, read from the environment on every call (tests point it elsewhere)."""
    return Path(os.environ.get("GPT2_ONNX_CACHE", Path.home() / ".cache" / "gpt2-onnx")).expanduser()


def cached_dir(hub_id: str) -> Path:
    """Where the export of a hub id (owner/name) lives in the cache."""
    return cache_root() / hub_id.replace("/", "--")
