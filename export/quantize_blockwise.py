"""INT4 weights: symmetric block-wise quantization for onnxruntime's `MatMulNBits`.

Every weight matmul — the four of each block and the tied embedding / LM head — is
stored as 4-bit values in blocks of 32 along the input dimension, one FP32 scale per
block, zero point 8 (onnxruntime's default for 4 bits, so none is stored).
`accuracy_level` 4 lets onnxruntime quantize activations to int8 per block and use
integer kernels. The embedding lookup reads the same packed LM-head matrix with
`GatherBlockQuantized`, so the tied matrix is still stored once.

    W [in, out] ─transpose─> [out, in] ─blocks of 32─> q ∈ [-7, 7] + 8, packed 2 per byte
    MatMulNBits B: [out, in / 32, 16] uint8;  scales: [out, in / 32] float
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt2_onnx.manifest import Architecture, Quantization

from .graph import MS_DOMAIN, GraphWriter
from .quantize import quantized_weight_names


@dataclass(frozen=True)
class BlockSettings:
    bits: int = 4
    block_size: int = 32
    accuracy_level: int = 4  # 4: int8 activations per block, integer kernels

    def __post_init__(self):
        if self.bits != 4 or self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"BlockSettings: 4 bits and a power-of-two block size ≥ 16 are supported, got {self}")


def quantize_blocks(w_t: np.ndarray, settings: BlockSettings) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] float → ([out, in / block, block / 2] packed uint8, [out, in / block] float32 scales)."""
    out_features, in_features = w_t.shape
    blocks = w_t.reshape(out_features, in_features // settings.block_size, settings.block_size)
    qmax = 2 ** (settings.bits - 1) - 1
    scale = np.abs(blocks).max(axis=-1) / qmax
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = (np.clip(np.rint(blocks / scale[..., None]), -qmax, qmax) + 2 ** (settings.bits - 1)).astype(np.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4), scale


class Int4Linear:
    """Emits MatMulNBits on block-quantized 4-bit weights."""

    def __init__(self, settings: BlockSettings = BlockSettings()):
        self.settings = settings

    def _packed(self, g: GraphWriter, weight: str, rows: bool = False) -> tuple[str, str, int, int]:
        """Blocks along the input dimension: a Conv1D weight `[in, out]` is transposed first,
        the `[vocab, n_embd]` LM head (`rows`) already has it last."""
        packed_name, scale_name = weight + ".q4", weight + ".q4_scale"
        w_t = g.weights[weight] if rows else g.weights[weight].T  # [out, in]
        out_features, in_features = w_t.shape
        if packed_name not in g.weights:
            g.weights[packed_name], g.weights[scale_name] = quantize_blocks(w_t, self.settings)
        return g.weight(packed_name), g.weight(scale_name), in_features, out_features

    def _matmul_nbits(self, g: GraphWriter, x: str, packed: tuple[str, str, int, int]) -> str:
        s = self.settings
        b, scale, k, n = packed
        return g.op(
            "MatMulNBits",
            [x, b, scale],
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=s.bits,
            block_size=s.block_size,
            accuracy_level=s.accuracy_level,
        )

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        y = self._matmul_nbits(g, x, self._packed(g, weight))
        return y if bias is None else g.op("Add", [y, g.weight(bias)])

    def lm_head(self, g: GraphWriter, x: str, weight: str) -> str:
        return self._matmul_nbits(g, x, self._packed(g, weight, rows=True))

    def embed(self, g: GraphWriter, weight: str, ids: str) -> str:
        s = self.settings
        packed, scale, k, n = self._packed(g, weight, rows=True)  # rows of `packed` are the vocabulary
        rows = g.op("Reshape", [packed, g.const([n, k * s.bits // 8])])  # [vocab, n_embd / 2]
        return g.op(
            "GatherBlockQuantized",
            [rows, ids, scale],
            domain=MS_DOMAIN,
            bits=s.bits,
            block_size=s.block_size,
            gather_axis=0,
            quantize_axis=1,
        )  # [batch, seq, n_embd]

    def quantization(self, a: Architecture, tied_lm_head: bool) -> Quantization:
        s = self.settings
        return Quantization(
            scheme="blockwise",
            bits=s.bits,
            block_size=s.block_size,
            symmetric=True,
            zero_point=2 ** (s.bits - 1),
            max_value=2 ** (s.bits - 1) - 1,
            activations="int8_per_block",
            weights=quantized_weight_names(a, tied_lm_head),
        )
