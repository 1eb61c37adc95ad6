"""Checkpoint → ONNX model directory. Needs the `hub` extra (onnx, huggingface_hub); the parity check,
the `check` extra (torch, transformers)."""

from .api import export_model

__all__ = ["export_model"]
