"""gpt2-onnx: fast, torch-free GPT-2 generation on the CPU with ONNX Runtime.

from gpt2_onnx import Generator
gen = Generator.load("uer/gpt2-distil-chinese-cluecorpussmall")
print(gen.generate("这是很久之前的事情了", max_new_tokens=50).text)
"""

from importlib import import_module

from .errors import ContextLengthError, GenerationOptionError, Gpt2OnnxError, ModelDirectoryError, SourceError

__version__ = "0.1.0"

# Imported on first use, not with the package: `gpt2-onnx` starts by importing
# gpt2_onnx.apps.cli, and numpy + onnxruntime must load inside its Ctrl-C handling.
_LAZY = {
    "Generator": ".generator",
    "GenerationResult": ".generator",
    "Timings": ".generator",
    "GenerationConfig": ".options",
}

__all__ = [
    "Generator",
    "GenerationConfig",
    "GenerationResult",
    "Timings",
    "Gpt2OnnxError",
    "GenerationOptionError",
    "ContextLengthError",
    "ModelDirectoryError",
    "SourceError",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'gpt2_onnx' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
