"""gpt2-onnx: fast, torch-free GPT-2 generation on the CPU with ONNX Runtime.

    from gpt2_onnx import Generator
    gen = Generator.load("uer/gpt2-distil-chinese-cluecorpussmall")
    print(gen.generate("这是很久之前的事情了", max_new_tokens=50).text)
"""

from .errors import ContextLengthError, GenerationOptionError, Gpt2OnnxError, ModelDirectoryError, SourceError
from .generator import GenerationResult, Generator, Timings
from .options import GenerationConfig

__version__ = "0.1.0"

__all__ = [
    "Generator", "GenerationConfig", "GenerationResult", "Timings",
    "Gpt2OnnxError", "GenerationOptionError", "ContextLengthError", "ModelDirectoryError", "SourceError",
]
