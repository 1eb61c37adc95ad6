"""INT4 blocks: what the exporter stores is what onnxruntime multiplies by, and the asymmetric
searched grid fits weights better than the symmetric absmax grid it replaced."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gpt2_onnx.export.graph import MS_DOMAIN, OPSET
from gpt2_onnx.export.quantize_blockwise import quantize_blocks


def unpack(packed: np.ndarray) -> np.ndarray:
    """[..., k] uint8 → [..., 2k] 4-bit values, low nibble first."""
    return np.stack([packed & 15, packed >> 4], -1).reshape(*packed.shape[:-1], -1)


def dequantize(packed: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """MatMulNBits' reading of its inputs: [out, in] float."""
    out_features, n_blocks, half = packed.shape
    q = unpack(packed).astype(np.float32)  # [out, blocks, B]
    z = unpack(zero)[:, :n_blocks].astype(np.float32)  # [out, blocks]
    return ((q - z[..., None]) * scale[..., None]).reshape(out_features, n_blocks * 2 * half)


def heavy_tailed(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Trained weights have outliers: Student-t rather than normal."""
    return (np.random.default_rng(seed).standard_t(4, size=shape) * 0.02).astype(np.float32)


def symmetric_absmax(w_t: np.ndarray, block_size: int) -> np.ndarray:
    """The grid INT4 used before: q ∈ [-7, 7] × max |w| / 7 per block, dequantized."""
    blocks = w_t.reshape(w_t.shape[0], -1, block_size)
    scale = np.abs(blocks).max(-1, keepdims=True) / 7
    return (np.clip(np.rint(blocks / scale), -7, 7) * scale).reshape(w_t.shape)


@pytest.mark.parametrize("block_size", [32, 64])
def test_searched_asymmetric_blocks_halve_the_weight_error(block_size):
    w_t = heavy_tailed((256, 768))
    packed, scale, zero = quantize_blocks(w_t, block_size)
    assert packed.shape == (256, 768 // block_size, block_size // 2) and scale.shape == (256, 768 // block_size)
    q = unpack(packed)
    assert q.min() == 0 and q.max() == 15  # all 16 levels in use
    assert len(np.unique(unpack(zero))) > 3  # zero points vary by block
    error = np.mean((dequantize(packed, scale, zero) - w_t) ** 2)
    before = np.mean((symmetric_absmax(w_t, block_size) - w_t) ** 2)
    assert error < 0.6 * before, (error, before)


def test_matmul_nbits_multiplies_by_the_stored_blocks():
    """An odd number of blocks per column (zero points padded to a whole byte), accuracy
    level 0 (FP32 activations): the node's product is x @ the dequantized weights."""
    k, n, block_size = 96, 40, 32
    w = heavy_tailed((k, n), seed=1)
    packed, scale, zero = quantize_blocks(np.ascontiguousarray(w.T), block_size)
    node = helper.make_node(
        "MatMulNBits", ["x", "b", "s", "z"], ["y"], domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=32, accuracy_level=0
    )
    graph = helper.make_graph(
        [node],
        "int4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, name) for a, name in ((packed, "b"), (scale, "s"), (zero, "z"))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)], ir_version=10
    )
    x = np.random.default_rng(2).normal(size=(3, k)).astype(np.float32)
    (y,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ dequantize(packed, scale, zero).T, rtol=0, atol=1e-5)


def test_a_4_bit_head_looks_up_and_multiplies_by_the_stored_blocks():
    """`head_bits` 4: the embedding lookup (GatherBlockQuantized over the same packed rows) and the LM head
    (MatMulNBits) both read the blocks `quantize_blocks` stored, three blocks a row (zero points padded)."""
    from gpt2_onnx.export.graph import GraphWriter
    from gpt2_onnx.export.quantize_blockwise import Int4Linear
    from gpt2_onnx.precisions import Blockwise

    vocab, n_embd = 50, 96
    w = heavy_tailed((vocab, n_embd), seed=3)  # [vocab, n_embd]: a tied embedding / LM head
    g = GraphWriter({"wte": w})
    linear = Int4Linear(Blockwise(head_bits=4, accuracy_level=0))
    embedded = linear.embed(g, "wte", "ids")
    logits = linear.lm_head(g, "x", "wte")
    inputs = [
        helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, n_embd]),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in (embedded, logits)]
    model = helper.make_model(
        helper.make_graph(g.nodes, "head", inputs, outputs, g.initializers),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        ir_version=10,
    )
    ids = np.array([[0, 7, vocab - 1]])
    x = np.random.default_rng(4).normal(size=(2, n_embd)).astype(np.float32)
    rows, y = ort.InferenceSession(model.SerializeToString()).run(None, {"ids": ids, "x": x})
    stored = dequantize(*quantize_blocks(w, 32))  # [vocab, n_embd]
    assert np.abs(stored - w).max() > 0  # quantized: the comparison below tells the stored blocks from w
    np.testing.assert_array_equal(rows[0], stored[ids[0]])
    np.testing.assert_allclose(y, x @ stored.T, rtol=0, atol=1e-5)
