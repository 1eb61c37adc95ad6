"""INT8 weights: symmetric, per output column, with dynamic activation quantization.

What is quantized is an explicit list (`int8_weight_names`): the four matmul weights of
every block (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`) and the tied
embedding / LM head. Biases, layer norms and the position embedding stay FP32: together
they are under 2 % of the parameters and are not matmul operands.

Each matmul becomes onnxruntime's `DynamicQuantizeMatMul` (com.microsoft): the
activation row block is quantized to uint8 at run time, multiplied with the int8 weight
in integer arithmetic and rescaled by the weight's per-column scale. The embedding lookup
gathers int8 columns of the same LM-head matrix and multiplies by their scales, so the
tied matrix is still stored once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt2_onnx.manifest import Architecture, Quantization

from .graph import MS_DOMAIN, GraphWriter


@dataclass(frozen=True)
class Int8Settings:
    """Weight range: [-127, 127] keeps the grid symmetric around zero. On x86 CPUs without
    VNNI, onnxruntime's u8×s8 kernel can saturate its 16-bit pair sums; `weight_max` 63
    (7-bit weights, onnxruntime's "reduce_range") rules that out at some cost in precision."""

    weight_max: int = 127


def int8_weight_names(a: Architecture, tied_lm_head: bool) -> tuple[str, ...]:
    """The checkpoint tensors that the INT8 variant stores as int8."""
    names = [
        f"h.{i}.{m}.weight"
        for i in range(a.n_layer)
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    return tuple(names + ["wte.weight" if tied_lm_head else "lm_head.weight"])


def quantize_columns(w: np.ndarray, weight_max: int) -> tuple[np.ndarray, np.ndarray]:
    """[in, out] float → ([in, out] int8, [out] float32 scale), symmetric per column."""
    scale = np.abs(w).max(axis=0) / weight_max
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.rint(w / scale), -weight_max, weight_max).astype(np.int8)
    return q, scale


class Int8Linear:
    """Emits DynamicQuantizeMatMul on per-column int8 weights."""

    def __init__(self, settings: Int8Settings = Int8Settings()):
        self.settings = settings

    def _quantized(self, g: GraphWriter, weight: str) -> tuple[str, str, str]:
        q_name, s_name, z_name = weight + ".int8", weight + ".scale", weight + ".zero_point"
        if q_name not in g.weights:
            q, scale = quantize_columns(g.weights[weight], self.settings.weight_max)
            g.weights[q_name], g.weights[s_name] = q, scale
            g.weights[z_name] = np.zeros_like(scale, dtype=np.int8)
        return g.weight(q_name), g.weight(s_name), g.weight(z_name)

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        q, scale, zero = self._quantized(g, weight)
        inputs = [x, q, scale, zero] + ([g.weight(bias)] if bias else [])
        return g.op("DynamicQuantizeMatMul", inputs, domain=MS_DOMAIN)

    def gather_columns(self, g: GraphWriter, weight: str, ids: str) -> str:
        q, scale, _ = self._quantized(g, weight)
        columns = g.op("Cast", [g.op("Gather", [q, ids], axis=1)], to=1)  # [n_embd, batch, seq] float
        return g.op("Mul", [columns, g.op("Gather", [scale, ids])])  # × [batch, seq] scales


def quantization_record(a: Architecture, tied_lm_head: bool, settings: Int8Settings) -> Quantization:
    """What the manifest says about the INT8 variant."""
    return Quantization(
        method="dynamic",
        weight_type="int8" if settings.weight_max == 127 else f"int8 (range ±{settings.weight_max})",
        symmetric=True,
        per_channel=True,
        weights=int8_weight_names(a, tied_lm_head),
    )

