"""What a checkpoint source looks like, for the exporter (which reads it) and the hub
resolver (which tells a checkpoint from a model directory and a path from a hub id)."""

from __future__ import annotations

from pathlib import Path

# the weight files of a (not exported) checkpoint, in the order the exporter prefers them
CHECKPOINT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def looks_like_path(name: str) -> bool:
    """True for names that cannot be hub ids (owner/name), so a missing one is a missing path;
    `models/distil` is a path too when `models` is a local directory."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()
