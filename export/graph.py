"""Build the GPT-2 ONNX graph directly from checkpoint weights.

One graph serves prefill (past_len 0) and decode, with the ecosystem's I/O names
(see `gpt2_onnx.manifest.IO_PAST_KEY_VALUES`). The graph is written node by node
rather than traced from torch, so that every tensor is stored exactly once: the
tied token embedding is kept only as the LM head's `[n_embd, vocab]` matrix, and
the embedding lookup gathers its columns.

    input_ids ──Gather(wte_T, axis=1)──┐
    position_ids ──Gather(wpe)─────────+── x [batch, seq, n_embd]
    attention_mask ─> allowed [batch, 1, seq, total]   (causal ∧ not padding)
    for each block h.{i}:
        x = x + attn(ln_1(x), past.{i}) ──> present.{i}.key|value
        x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wte_T            [batch, seq, vocab]

Weight matmuls go through a `Linear` strategy, so the INT8 variant differs from
FP32 only in how a matmul and the embedding lookup are emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gpt2_onnx.manifest import Architecture

OPSET = 20  # Gelu with approximate="tanh" is an ONNX op from opset 20
MS_DOMAIN = "com.microsoft"
WTE_T = "transformer.wte.weight.T"  # tied embedding / LM head, stored once, [n_embd, vocab]


@dataclass(frozen=True)
class GraphSpec:
    """What the graph needs beyond the weights."""

    architecture: Architecture
    layer_norm_epsilon: float
    gelu_approximate: str  # "tanh" for gelu_new / gelu_pytorch_tanh, "none" for exact gelu
    tied_lm_head: bool  # False: the checkpoint's own `lm_head.weight` is used


class Linear(Protocol):
    """Emits `x @ W (+ b)` and the embedding lookup for one precision."""

    def matmul(self, g: "GraphWriter", x: str, weight: str, bias: str | None) -> str: ...

    def gather_columns(self, g: "GraphWriter", weight: str, ids: str) -> str: ...


class GraphWriter:
    """Collects nodes and initializers with unique names."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._stored: set[str] = set()
        self._count = 0

    def weight(self, name: str, array: np.ndarray | None = None) -> str:
        """Store a tensor once (from the checkpoint unless `array` is given) and return its name."""
        if name not in self._stored:
            value = self.weights[name] if array is None else array
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
            self._stored.add(name)
        return name

    def const(self, value, dtype=np.int64) -> str:
        self._count += 1
        return self.weight(f"const_{self._count}", np.array(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        """Append a node; return its output name (or names, when several)."""
        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op_type}_{self._count}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{self._count}", domain=domain, **attrs))
        return names[0] if len(names) == 1 else names


class Fp32Linear:
    """Plain MatMul + Add on the checkpoint's FP32 weights."""

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        y = g.op("MatMul", [x, g.weight(weight)])
        return y if bias is None else g.op("Add", [y, g.weight(bias)])

    def gather_columns(self, g: GraphWriter, weight: str, ids: str) -> str:
        return g.op("Gather", [g.weight(weight), ids], axis=1)  # [n_embd, batch, seq]


def build_model(weights: dict[str, np.ndarray], spec: GraphSpec, linear: Linear) -> onnx.ModelProto:
    """The whole graph; `weights` maps checkpoint names (without `transformer.`) to arrays,
    plus `WTE_T`. Matmul weights are `[in, out]` as in GPT-2's Conv1D."""
    a = spec.architecture
    g = GraphWriter(weights)
    inputs, outputs = _io(a)

    allowed = _attention_allowed(g)
    tokens = g.op("Transpose", [linear.gather_columns(g, WTE_T, "input_ids")], perm=[1, 2, 0])
    positions = g.op("Gather", [g.weight("wpe.weight"), "position_ids"])
    x = g.op("Add", [tokens, positions])  # [batch, seq, n_embd]
    for i in range(a.n_layer):
        p = f"h.{i}."
        h = _layer_norm(g, x, p + "ln_1", spec.layer_norm_epsilon)
        x = g.op("Add", [x, _attention(g, linear, h, allowed, p, i, a)])
        h = _layer_norm(g, x, p + "ln_2", spec.layer_norm_epsilon)
        h = g.op("Gelu", [linear.matmul(g, h, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias")], approximate=spec.gelu_approximate)
        x = g.op("Add", [x, linear.matmul(g, h, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias")])
    x = _layer_norm(g, x, "ln_f", spec.layer_norm_epsilon)
    lm_head = WTE_T if spec.tied_lm_head else "lm_head.weight.T"
    g.op("Identity", [linear.matmul(g, x, lm_head, None)], outputs=["logits"])  # [batch, seq, vocab]

    graph = helper.make_graph(g.nodes, "gpt2", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="gpt2-onnx")
    model.ir_version = 10
    return model


def _io(a: Architecture):
    def tensor(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    inputs = [
        tensor("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        tensor("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        tensor("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [tensor("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", a.vocab_size])]
    kv_past = ["batch_size", a.n_head, "past_sequence_length", a.head_dim]
    kv_present = ["batch_size", a.n_head, "total_sequence_length", a.head_dim]
    for i in range(a.n_layer):
        for kind in ("key", "value"):
            inputs.append(tensor(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_past))
            outputs.append(tensor(f"present.{i}.{kind}", TensorProto.FLOAT, kv_present))
    return inputs, outputs


def _attention_allowed(g: GraphWriter) -> str:
    """Which keys each query may attend to: causal (by absolute position) and not padding.

    Query q of this call sits at position past_len + q of the sequence; key k is allowed
    when k <= past_len + q and attention_mask[:, k] == 1. Shape [batch, 1, seq, total].
    """
    seq = g.op("Squeeze", [g.op("Shape", ["input_ids"], start=1, end=2)])
    total = g.op("Squeeze", [g.op("Shape", ["attention_mask"], start=1, end=2)])
    past = g.op("Sub", [total, seq])
    one = g.const(1)
    key_pos = g.op("Range", [g.const(0), total, one])  # [total]
    query_pos = g.op("Unsqueeze", [g.op("Range", [past, total, one]), g.const([1])])  # [seq, 1]
    causal = g.op("LessOrEqual", [key_pos, query_pos])  # [seq, total]
    mask = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.BOOL), g.const([1, 2])])
    return g.op("And", [causal, mask])  # [batch, 1, seq, total]


def _layer_norm(g: GraphWriter, x: str, prefix: str, eps: float) -> str:
    return g.op("LayerNormalization", [x, g.weight(prefix + ".weight"), g.weight(prefix + ".bias")], axis=-1, epsilon=eps)


def _attention(g: GraphWriter, linear: Linear, h: str, allowed: str, p: str, i: int, a: Architecture) -> str:
    c, n_head, d = a.n_embd, a.n_head, a.head_dim
    qkv = linear.matmul(g, h, p + "attn.c_attn.weight", p + "attn.c_attn.bias")  # [batch, seq, 3*n_embd]
    heads_shape = g.const([0, 0, n_head, d])
    q, k, v = (
        g.op("Transpose", [g.op("Reshape", [t, heads_shape])], perm=[0, 2, 1, 3])  # [batch, n_head, seq, head_dim]
        for t in g.op("Split", [qkv, g.const([c, c, c])], outputs=3, axis=2)
    )
    q = g.op("Mul", [q, g.const(1.0 / np.sqrt(d), np.float32)])
    key = g.op("Concat", [f"past_key_values.{i}.key", k], outputs=[f"present.{i}.key"], axis=2)
    value = g.op("Concat", [f"past_key_values.{i}.value", v], outputs=[f"present.{i}.value"], axis=2)
    scores = g.op("MatMul", [q, g.op("Transpose", [key], perm=[0, 1, 3, 2])])  # [batch, n_head, seq, total]
    # The most negative float, as transformers uses: a row with nothing allowed (a padding
    # query) gets a uniform softmax instead of NaN, and its output is never used.
    scores = g.op("Where", [allowed, scores, g.const(np.finfo(np.float32).min, np.float32)])
    context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), value])  # [batch, n_head, seq, head_dim]
    context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), g.const([0, 0, c])])
    return linear.matmul(g, context, p + "attn.c_proj.weight", p + "attn.c_proj.bias")  # [batch, seq, n_embd]
