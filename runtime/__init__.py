"""gpt2-onnx: fast, torch-free GPT-2 generation on the CPU with ONNX Runtime."""

__version__ = "0.1.0"
