"""Where a model name points: a model directory, or a hub id exported into the cache.

A hub id is exported once (this needs the `hub` extra: onnx and huggingface_hub, no torch) into
`$GPT2_ONNX_CACHE` (default `~/.cache/gpt2-onnx/`), FP32, INT8 and INT4, with the
download's progress bar and each export step shown on stderr; later loads read
the cached directory without importing torch.
"""

from __future__ import annotations

from pathlib import Path

from .cache import cached_dir
from .errors import ModelDirectoryError
from .manifest import CONFIG_NAME, MANIFEST_NAME
from .precisions import QUANTIZED
from .progress import print_progress
from .sources import CHECKPOINT_WEIGHTS, looks_like_path


def resolve_model_dir(model: str | Path | None) -> Path:
    """A directory holding `gpt2_onnx.json`; hub ids are exported into the cache first."""
    from gpt2_onnx.models import default_model

    name = str(model) if model is not None else default_model()
    path = Path(name).expanduser()
    if path.is_dir():
        has_weights = any((path / f).is_file() for f in CHECKPOINT_WEIGHTS)
        if not (path / MANIFEST_NAME).is_file() and (path / CONFIG_NAME).is_file() and has_weights:
            raise ModelDirectoryError(
                f"{path} is a checkpoint, not an exported model directory; run `gpt2-onnx export {path} OUT_DIR` and "
                "load OUT_DIR"
            )
        return path
    if looks_like_path(name):
        raise ModelDirectoryError(
            f"model directory {name} does not exist; export one with `gpt2-onnx export SOURCE {name}`"
        )
    cached = cached_dir(name)
    if (cached / MANIFEST_NAME).is_file():
        return cached
    return _export_to_cache(name, cached)


def _export_to_cache(hub_id: str, target: Path) -> Path:
    try:
        from gpt2_onnx.export import export_model
    except ImportError as e:
        raise ModelDirectoryError(
            f"{hub_id} has not been exported yet and exporting needs the hub extra ({e.name} is missing): "
            "pip install 'gpt2-onnx[hub]' (no torch), or export it elsewhere and pass the model directory"
        ) from None
    print_progress(f"exporting {hub_id} into {target} (first use only)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelDirectoryError(
            f"cannot create the cache {target.parent} ({e.strerror}); set GPT2_ONNX_CACHE to a writable directory"
        ) from None
    # wait: a concurrent first use of the same id exports it once, the other loads its result
    return export_model(hub_id, target, quantize=QUANTIZED, force=True, wait=True, progress=print_progress)
