"""INT4 weights: asymmetric block-wise quantization for onnxruntime's `MatMulNBits`.

The four matmul weights of every block are stored as 4-bit values in blocks along the
input dimension, each block with its own FP32 scale and 4-bit zero point, so a block's 16
levels span its own [min, max] instead of a symmetric [-7, 7] that leaves one unused.
Each block's scale and zero point are searched (no calibration data): candidate ranges
shrunk from the block's min/max, each refined by least squares for the scale, keeping the
one with the smallest squared error on the weights (as llama.cpp's k-quants do).

    W [in, out] ─transpose─> [out, in] ─blocks of B─> w ≈ s · (q − z),  q, z ∈ [0, 15]
    MatMulNBits B: [out, in / B, B / 2] uint8 (2 per byte);  scales: [out, in / B] float;
                zero_points: [out, ⌈(in / B) / 2⌉] uint8 (2 per byte)

The tied embedding / LM head, the largest matrix and the one whose error reaches the
logits directly, is kept at 8 bits per row (`head_bits` 8: `Int8Linear`, the int8
precision's exact per-token kernel), or blocked like the rest (`head_bits` 4: MatMulNBits
for the head, `GatherBlockQuantized` for the lookup); either way it is stored once.
`accuracy_level` 4 lets onnxruntime quantize activations to int8 per block and use
integer kernels.
"""

from __future__ import annotations

import numpy as np

from gpt2_onnx.manifest import Architecture, Quantization
from gpt2_onnx.precisions import Blockwise

from .graph import MS_DOMAIN, GraphWriter
from .quantize import Int8Linear, Int8Settings, quantized_weight_names

LEVELS = 16  # 4 bits
RANGE_FACTORS = (0.8, 0.85, 0.9, 0.95, 1.0)  # candidate ranges, as fractions of a block's max − min
CHUNK_BLOCKS = 1 << 16  # blocks searched at once: bounds the search's temporaries to a few MB


def search_blocks(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, B] float → (q [n, B] uint8 in [0, 15], scale [n] float32, zero [n] uint8) minimising
    Σ (w − s · (q − z))² per block over the candidate ranges (each one least-squares step)."""
    b = blocks.astype(np.float32)
    lo, hi = np.minimum(b.min(-1, keepdims=True), 0), np.maximum(b.max(-1, keepdims=True), 0)  # [n, 1]
    span = np.where(hi > lo, hi - lo, 1.0)
    best = (np.full_like(span, np.inf), span / (LEVELS - 1), np.zeros_like(span))  # (error, scale, zero)
    for factor in RANGE_FACTORS:
        s = span * factor / (LEVELS - 1)
        for z0 in (-lo / s, (LEVELS - 1) / 2 - (lo + hi) / (2 * s)):  # the range's low end at 0, or centred
            z = np.clip(np.rint(z0), 0, LEVELS - 1)
            q = np.clip(np.rint(b / s) + z, 0, LEVELS - 1) - z
            # the scale that fits these levels best: argmin_s Σ (w − s·q)²
            qq = (q * q).sum(-1, keepdims=True)
            s = np.where(qq > 0, (b * q).sum(-1, keepdims=True) / np.maximum(qq, 1e-30), s)
            s = np.where(s > 0, s, span / (LEVELS - 1))
            q = np.clip(np.rint(b / s) + z, 0, LEVELS - 1) - z
            err = ((b - s * q) ** 2).sum(-1, keepdims=True)
            better = err < best[0]
            best = (np.where(better, err, best[0]), np.where(better, s, best[1]), np.where(better, z, best[2]))
    scale, zero = best[1], best[2]
    q = np.clip(np.rint(b / scale) + zero, 0, LEVELS - 1)
    return q.astype(np.uint8), scale[:, 0].astype(np.float32), zero[:, 0].astype(np.uint8)


def _pack(values: np.ndarray) -> np.ndarray:
    """[..., 2k] 4-bit values → [..., k] uint8, the first of each pair in the low nibble."""
    return values[..., 0::2] | (values[..., 1::2] << 4)


def quantize_blocks(w_t: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[out, in] float → (packed [out, in / B, B / 2] uint8, scales [out, in / B] float32,
    zero points [out, ⌈(in / B) / 2⌉] uint8)."""
    out_features, in_features = w_t.shape
    if in_features % block_size:
        raise ValueError(f"INT4 blocks of {block_size} need the input size to be a multiple, got {in_features}")
    n_blocks = in_features // block_size
    flat = w_t.reshape(-1, block_size)  # [out · in / B, B]
    parts = [search_blocks(flat[i : i + CHUNK_BLOCKS]) for i in range(0, len(flat), CHUNK_BLOCKS)]
    q, scale, zero = (np.concatenate(p) for p in zip(*parts))
    zero = zero.reshape(out_features, n_blocks)
    if n_blocks % 2:
        zero = np.pad(zero, ((0, 0), (0, 1)))
    return _pack(q.reshape(out_features, n_blocks, block_size)), scale.reshape(out_features, n_blocks), _pack(zero)


class Int4Linear:
    """Emits MatMulNBits on block-quantized 4-bit weights (the head at `head_bits`)."""

    def __init__(self, settings: Blockwise, head: Int8Settings | None = None):
        """`head`: the 8-bit head's settings (default: the int8 precision's)."""
        self.settings = settings
        self.head = Int8Linear(head or Int8Settings()) if settings.head_bits == 8 else None

    def _packed(self, g: GraphWriter, weight: str, rows: bool = False) -> tuple[str, str, str, int, int]:
        """Blocks along the input dimension: a Conv1D weight `[in, out]` is transposed first,
        the `[vocab, n_embd]` LM head (`rows`) already has it last."""
        names = weight + ".q4", weight + ".q4_scale", weight + ".q4_zero"
        w_t = g.weights[weight] if rows else g.weights[weight].T  # [out, in]
        out_features, in_features = w_t.shape
        if names[0] not in g.weights:
            arrays = quantize_blocks(w_t, self.settings.block_size)
            g.weights.update(zip(names, arrays))
        return *(g.weight(n) for n in names), in_features, out_features

    def _matmul_nbits(self, g: GraphWriter, x: str, packed: tuple[str, str, str, int, int]) -> str:
        s = self.settings
        b, scale, zero, k, n = packed
        return g.op(
            "MatMulNBits",
            [x, b, scale, zero],
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=4,
            block_size=s.block_size,
            accuracy_level=s.accuracy_level,
        )

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        y = self._matmul_nbits(g, x, self._packed(g, weight))
        return y if bias is None else g.op("Add", [y, g.weight(bias)])

    def lm_head(self, g: GraphWriter, x: str, weight: str) -> str:
        if self.head:
            return self.head.lm_head(g, x, weight)
        return self._matmul_nbits(g, x, self._packed(g, weight, rows=True))

    def embed(self, g: GraphWriter, weight: str, ids: str) -> str:
        if self.head:
            return self.head.embed(g, weight, ids)
        s = self.settings
        packed, scale, zero, k, n = self._packed(g, weight, rows=True)  # rows of `packed` are the vocabulary
        rows = g.op("Reshape", [packed, g.const([n, k // 2])])  # [vocab, n_embd / 2]
        return g.op(
            "GatherBlockQuantized",
            [rows, ids, scale, zero],
            domain=MS_DOMAIN,
            bits=4,
            block_size=s.block_size,
            gather_axis=0,
            quantize_axis=1,
        )  # [batch, seq, n_embd]

    def quantization(self, a: Architecture, tied_lm_head: bool) -> Quantization:
        names = quantized_weight_names(a, tied_lm_head)
        eight_bit = names[-1:] if self.head else ()  # the embedding / LM head
        return Quantization(
            scheme="blockwise",
            bits=4,
            block_size=self.settings.block_size,
            symmetric=False,
            zero_point=None,
            max_value=LEVELS - 1,
            activations="int8_per_block" if self.settings.accuracy_level == 4 else "float",
            weights=tuple(n for n in names if n not in eight_bit),
            per_channel_8bit=eight_bit,
        )
