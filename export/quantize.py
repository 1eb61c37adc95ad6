"""INT8 weights: symmetric 8-bit grid per output column; activations quantized per token at run time.

What is quantized is an explicit list (`quantized_weight_names`): the four matmul weights of
every block (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`) and the tied
embedding / LM head. Biases, layer norms and the position embedding stay FP32: together
they are under 2 % of the parameters and are not matmul operands.

Each activation row (one token) is quantized with its own scale, so a token's result
depends only on its own values: never on the other rows of a batch, nor on how a prompt
is split into chunks. onnxruntime's `DynamicQuantizeMatMul` takes one scale for the whole
input, which made a row's greedy tokens change with its neighbours. The per-token matmul
costs the same (measured in `gpt2_onnx.benchmarks.kernels`):

    x [batch, seq, in] ─max |x| per token─> s [batch, seq, 1] = max / 127
    x / s + 128 ─round─> x_q uint8 (zero point 128)
    MatMulIntegerToFloat(x_q, W_q, 1, w_scale [out]) [batch, seq, out] × s (+ bias)

The integer product is exact, and the scales are applied per row and per column, so a
row's output is bit-identical in any batch. The tied embedding / LM head is stored once,
as 8-bit rows `[vocab, n_embd]` with one scale per token: the embedding lookup gathers
and rescales rows, the LM head multiplies by their transpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from gpt2_onnx.manifest import Architecture, Quantization

from .graph import MS_DOMAIN, GraphWriter

ACTIVATION_MAX = 127  # activations use [-127, 127] + 128: uint8 without saturation


@dataclass(frozen=True)
class Int8Settings:
    """The weight grid is symmetric, [-weight_max, weight_max] × scale.

    Default: stored as int8 with 7-bit range (weight_max 63, onnxruntime's "reduce_range").
    onnxruntime's u8×s8 kernels are the fast ones, but on x86 CPUs without VNNI they
    saturate 16-bit pair sums with full 8-bit weights (measured: 8× the error); 7-bit
    weights rule that out. `storage="uint8"` (zero point 128) keeps the 8-bit grid with
    u8×u8 kernels that never overflow: measured on a trained model, +0.01 % perplexity
    instead of +0.04 %, but prefill and batches up to 40 % slower.
    """

    storage: str = "int8"
    weight_max: int = 63

    def __post_init__(self):
        if self.storage not in ("uint8", "int8") or not 1 <= self.weight_max <= 127:
            raise ValueError(f"Int8Settings: storage must be 'uint8' or 'int8' and weight_max in [1, 127], got {self}")

    @property
    def zero_point(self) -> int:
        return 128 if self.storage == "uint8" else 0


def quantized_weight_names(a: Architecture, tied_lm_head: bool) -> tuple[str, ...]:
    """The checkpoint tensors that the quantized variants store in fewer bits."""
    names = [
        f"h.{i}.{m}.weight" for i in range(a.n_layer) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    return tuple(names + ["wte.weight" if tied_lm_head else "lm_head.weight"])


def quantize_columns(w: np.ndarray, settings: Int8Settings) -> tuple[np.ndarray, np.ndarray]:
    """[in, out] float → ([in, out] stored ints, [out] float32 scale), symmetric per column."""
    scale = np.abs(w).max(axis=0) / settings.weight_max
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.rint(w / scale), -settings.weight_max, settings.weight_max) + settings.zero_point
    return q.astype(np.dtype(settings.storage)), scale


def quantize_tokens(g: GraphWriter, x: str) -> tuple[str, str]:
    """x [..., in] float → (x_q [..., in] uint8 with zero point 128, scale [..., 1]): each
    token's row on its own symmetric grid."""
    amax = g.op("ReduceMax", [g.op("Abs", [x]), g.const([-1])], keepdims=1)  # [..., 1]
    scale = g.op("Mul", [g.op("Max", [amax, g.const(1e-30, np.float32)]), g.const(1 / ACTIVATION_MAX, np.float32)])
    # x / s ∈ [-127, 127]; + 128.5 then truncation is round-half-up into [1, 255]
    shifted = g.op("Add", [g.op("Div", [x, scale]), g.const(128.5, np.float32)])
    return g.op("Cast", [shifted], to=TensorProto.UINT8), scale


class Int8Linear:
    """Emits per-token quantized activations × per-column 8-bit weights (MatMulIntegerToFloat)."""

    def __init__(self, settings: Int8Settings = Int8Settings()):
        self.settings = settings

    def _quantized(self, g: GraphWriter, weight: str, rows: bool = False) -> tuple[str, str, str]:
        """Stored ints in the weight's own layout, one scale per output unit: `[in, out]`
        Conv1D weights per column, the `[vocab, n_embd]` LM head (`rows`) per row."""
        q_name, s_name, z_name = weight + ".quantized", weight + ".scale", weight + ".zero_point"
        if q_name not in g.weights:
            w = g.weights[weight]
            q, scale = quantize_columns(w.T if rows else w, self.settings)
            g.weights[q_name], g.weights[s_name] = np.ascontiguousarray(q.T) if rows else q, scale
            g.weights[z_name] = np.full(scale.shape, self.settings.zero_point, dtype=q.dtype)
        return g.weight(q_name), g.weight(s_name), g.weight(z_name)

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        y = self._per_token(g, x, *self._quantized(g, weight))
        return y if bias is None else g.op("Add", [y, g.weight(bias)])

    def lm_head(self, g: GraphWriter, x: str, weight: str) -> str:
        q, scale, zero = self._quantized(g, weight, rows=True)
        q_t = g.op("Transpose", [q], perm=[1, 0])  # [n_embd, vocab], folded at session creation
        return self._per_token(g, x, q_t, scale, zero)

    def _per_token(self, g: GraphWriter, x: str, q: str, scale: str, zero: str) -> str:
        """x [..., in] @ dequantized q [in, out] → [..., out], x quantized per token."""
        x_q, x_scale = quantize_tokens(g, x)
        inputs = [x_q, q, g.const(1.0, np.float32), scale, g.const(128, np.uint8), zero]
        return g.op("Mul", [g.op("MatMulIntegerToFloat", inputs, domain=MS_DOMAIN), x_scale])

    def embed(self, g: GraphWriter, weight: str, ids: str) -> str:
        q, scale, _ = self._quantized(g, weight, rows=True)
        rows = g.op("Cast", [g.op("Gather", [q, ids])], to=1)  # [batch, seq, n_embd] float
        if self.settings.zero_point:
            rows = g.op("Sub", [rows, g.const(float(self.settings.zero_point), np.float32)])
        return g.op(
            "Mul", [rows, g.op("Unsqueeze", [g.op("Gather", [scale, ids]), g.const([-1])])]
        )  # × [batch, seq, 1]

    def quantization(self, a: Architecture, tied_lm_head: bool) -> Quantization:
        s = self.settings
        return Quantization(
            scheme="per_channel",
            bits=8,
            block_size=None,
            symmetric=True,
            zero_point=s.zero_point,
            max_value=s.weight_max,
            activations="int8_per_token",
            weights=quantized_weight_names(a, tied_lm_head),
        )
