"""Build the GPT-2 ONNX graph directly from checkpoint weights.

One graph serves prefill (past_len 0) and decode, in either I/O convention of
`gpt2_onnx.graph_io`: the ecosystem's (`past_key_values`, for other tools) or the
fixed-size KV buffer that attention writes in place (`kv_buffer`, what the runtime runs). The
graph is written node by node rather than traced from torch, so that every tensor is stored exactly once: the
tied token embedding / LM head keeps the checkpoint's `[vocab, n_embd]` layout. The
embedding lookup gathers its rows, so only the rows it reads are ever paged in from
the memory-mapped weights; the LM head multiplies by its transpose, which onnxruntime
folds and repacks for its matmul kernel when the session is created.

    input_ids ──embed(wte)─────────────┐
    position_ids ──Gather(wpe)─────────+── x [batch, seq, n_embd]
    attention_mask ─Cast─> key_padding_mask [batch, total]     (or seqlens_k, total_sequence_length)
    for each block h.{i}:
        x = x + attn(ln_1(x), past.{i}) ──> present.{i}.key|value   (MultiHeadAttention | GroupQueryAttention)
        x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wteᵀ             [batch, seq, vocab]

Attention is one onnxruntime contrib op and the QKV projection one matmul: about 10
nodes per block instead of 27, which matters at batch 1, where per-node overhead is a
large part of a decode step. Residual adds stay separate from the layer norms: the fused
SkipLayerNormalization measured no faster for one token and 5× slower for a 256-token
prompt (onnxruntime 1.32 on this CPU), where Add + LayerNormalization take 1.7 ms in all.
MultiHeadAttention appends the new keys to a copy of the past (the ecosystem's
past → present contract); GroupQueryAttention, with past and present bound to the same
buffer, writes them in place, so a step costs no copy of the cache.

Weight matmuls go through a `Linear` strategy, so the INT8 variant differs from
FP32 only in how a matmul and the embedding lookup are emitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gpt2_onnx.graph_io import (
    ATTENTION_MASK,
    INPUT_IDS,
    IO_KV_BUFFER,
    IO_PAST_KEY_VALUES,
    KV_KINDS,
    LOGITS,
    LOGITS_TO_KEEP,
    POSITION_IDS,
    POSITION_TABLE,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    past_name,
    present_name,
)
from gpt2_onnx.manifest import Architecture, Quantization

OPSET = 20  # Gelu with approximate="tanh" is an ONNX op from opset 20
MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class GraphSpec:
    """What the graph needs beyond the weights."""

    architecture: Architecture
    layer_norm_epsilon: float
    gelu_approximate: str  # "tanh" for gelu_new / gelu_pytorch_tanh, "none" for exact gelu
    tied_lm_head: bool  # False: the checkpoint's own `lm_head.weight` is used


class Linear(Protocol):
    """Emits the weight matmuls and the embedding lookup for one precision."""

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        """`x @ W (+ b)` for a Conv1D weight `W` `[in, out]`."""

    def lm_head(self, g: GraphWriter, x: str, weight: str) -> str:
        """`x @ Wᵀ` for the `[vocab, n_embd]` embedding / LM-head matrix `W`."""

    def embed(self, g: GraphWriter, weight: str, ids: str) -> str:
        """Rows `ids` of the `[vocab, n_embd]` matrix `weight`: `[batch, seq]` ids → `[batch, seq, n_embd]`."""

    def quantization(self, a: Architecture, tied_lm_head: bool) -> Quantization | None:
        """What the manifest says about the weights this strategy stores (None: as in the checkpoint)."""


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
            self.initializers.append(numpy_helper.from_array(np.asarray(value, order="C"), name))
            self._stored.add(name)
        return name

    def const(self, value, dtype=np.int64) -> str:
        self._count += 1
        return self.weight(f"const_{self._count}", np.array(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        """Append a node; return its output name (or names, when several)."""
        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op_type}_{self._count}_{k}" for k in range(outputs)]
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=f"{op_type}_{self._count}", domain=domain, **attrs)
        )
        return names[0] if len(names) == 1 else names


class Fp32Linear:
    """Plain MatMul + Add on the checkpoint's FP32 weights."""

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        y = g.op("MatMul", [x, g.weight(weight)])
        return y if bias is None else g.op("Add", [y, g.weight(bias)])

    def lm_head(self, g: GraphWriter, x: str, weight: str) -> str:
        return g.op("MatMul", [x, g.op("Transpose", [g.weight(weight)], perm=[1, 0])])

    def embed(self, g: GraphWriter, weight: str, ids: str) -> str:
        return g.op("Gather", [g.weight(weight), ids])

    def quantization(self, a: Architecture, tied_lm_head: bool) -> None:
        return None


def build_model(
    weights: dict[str, np.ndarray], spec: GraphSpec, linear: Linear, io: str = IO_PAST_KEY_VALUES
) -> onnx.ModelProto:
    """The whole graph; `weights` maps checkpoint names (without `transformer.`) to arrays.
    Matmul weights are `[in, out]` as in GPT-2's Conv1D. `io`: the I/O
    convention (`IO_PAST_KEY_VALUES` or `IO_KV_BUFFER`)."""
    a, eps = spec.architecture, spec.layer_norm_epsilon
    g = GraphWriter(weights)
    inputs, outputs = _io(a, io)
    attend = _MultiHeadAttention(g, a) if io == IO_PAST_KEY_VALUES else _GroupQueryAttention(a)
    tokens = linear.embed(g, "wte.weight", INPUT_IDS)
    positions = g.op("Gather", [g.weight(POSITION_TABLE), POSITION_IDS])
    x = g.op("Add", [tokens, positions])  # residual stream [batch, seq, n_embd]
    h = _layer_norm(g, x, "h.0.ln_1", eps)
    for i in range(a.n_layer):
        p = f"h.{i}."
        attention = _attention(g, linear, attend, h, p, i)
        x, h = _add_and_norm(g, x, attention, p + "ln_2", eps)
        h = g.op(
            "Gelu", [linear.matmul(g, h, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias")], approximate=spec.gelu_approximate
        )
        mlp = linear.matmul(g, h, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias")
        x, h = _add_and_norm(g, x, mlp, f"h.{i + 1}.ln_1" if i + 1 < a.n_layer else "ln_f", eps)
    h = _last_positions(g, h)  # [batch, kept, n_embd]
    lm_head = "wte.weight" if spec.tied_lm_head else "lm_head.weight"
    g.op("Identity", [linear.lm_head(g, h, lm_head)], outputs=[LOGITS])  # [batch, kept, vocab]

    # an input with a default value: tools that do not know it get every position's logits
    inputs.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, []))
    g.weight(LOGITS_TO_KEEP, np.array(0, np.int64))
    graph = helper.make_graph(g.nodes, "gpt2", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="gpt2-onnx")
    model.ir_version = 10
    return model


def _io(a: Architecture, io: str):
    def tensor(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    batch, seq = "batch_size", "sequence_length"
    inputs = [tensor(INPUT_IDS, TensorProto.INT64, [batch, seq])]
    if io == IO_PAST_KEY_VALUES:
        inputs.append(tensor(ATTENTION_MASK, TensorProto.INT64, [batch, "total_sequence_length"]))
        kv_past = [batch, a.n_head, "past_sequence_length", a.head_dim]
        kv_present = [batch, a.n_head, "total_sequence_length", a.head_dim]
    elif io == IO_KV_BUFFER:
        inputs.append(tensor(SEQLENS_K, TensorProto.INT32, [batch]))
        inputs.append(tensor(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []))
        kv_past = kv_present = [batch, a.n_head, "capacity", a.head_dim]  # one buffer, written in place
    else:
        raise ValueError(f"unknown io convention {io!r}")
    inputs.append(tensor(POSITION_IDS, TensorProto.INT64, [batch, seq]))
    outputs = [tensor(LOGITS, TensorProto.FLOAT, [batch, seq, a.vocab_size])]
    for i in range(a.n_layer):
        for kind in KV_KINDS:
            inputs.append(tensor(past_name(i, kind), TensorProto.FLOAT, kv_past))
            outputs.append(tensor(present_name(i, kind), TensorProto.FLOAT, kv_present))
    return inputs, outputs


def _last_positions(g: GraphWriter, h: str) -> str:
    """The last `logits_to_keep` positions of h [batch, seq, n_embd] (all of them when it is 0):
    the runtime asks for 1, so prefill skips the LM head on every prompt position but the last."""
    seq = g.op("Shape", [h], start=1, end=2)  # [1]
    keep = g.op("Reshape", [LOGITS_TO_KEEP, g.const([1])])
    kept = g.op("Where", [g.op("Equal", [keep, g.const([0])]), seq, g.op("Min", [keep, seq])])
    return g.op("Slice", [h, g.op("Sub", [seq, kept]), seq, g.const([1])])


def _layer_norm(g: GraphWriter, x: str, prefix: str, eps: float) -> str:
    return g.op(
        "LayerNormalization", [x, g.weight(prefix + ".weight"), g.weight(prefix + ".bias")], axis=-1, epsilon=eps
    )


def _add_and_norm(g: GraphWriter, x: str, y: str, prefix: str, eps: float) -> tuple[str, str]:
    """(x + y, layer_norm(x + y)): the new residual stream and the next sublayer's input."""
    total = g.op("Add", [x, y])
    return total, _layer_norm(g, total, prefix, eps)


class _MultiHeadAttention:
    """Past and new keys concatenated into a new present; padding keys (mask 0) ignored."""

    def __init__(self, g: GraphWriter, a: Architecture):
        self.a = a
        self.key_padding_mask = g.op("Cast", [ATTENTION_MASK], to=TensorProto.INT32)  # [batch, total]

    def __call__(self, g: GraphWriter, qkv: str, i: int) -> str:
        c = self.a.n_embd
        q, k, v = g.op("Split", [qkv, g.const([c, c, c])], outputs=3, axis=2)  # [batch, seq, n_embd] each
        inputs = [q, k, v, "", self.key_padding_mask, "", past_name(i, "key"), past_name(i, "value")]
        return _emit(g, "MultiHeadAttention", inputs, i, num_heads=self.a.n_head, unidirectional=1)


class _GroupQueryAttention:
    """New keys written into the shared buffer at each row's own length; always causal.
    It takes the packed [batch, seq, 3 * n_embd] projection as it is (no Split)."""

    def __init__(self, a: Architecture):
        self.a = a

    def __call__(self, g: GraphWriter, qkv: str, i: int) -> str:
        inputs = [qkv, "", "", past_name(i, "key"), past_name(i, "value"), SEQLENS_K, TOTAL_SEQUENCE_LENGTH]
        return _emit(g, "GroupQueryAttention", inputs, i, num_heads=self.a.n_head, kv_num_heads=self.a.n_head)


def _emit(g: GraphWriter, op_type: str, inputs: list[str], i: int, **attrs) -> str:
    context, _, _ = g.op(
        op_type,
        inputs,
        outputs=[f"attn_{i}", present_name(i, "key"), present_name(i, "value")],
        domain=MS_DOMAIN,
        **attrs,
    )
    return context  # [batch, seq, n_embd]


def _attention(g: GraphWriter, linear: Linear, attend, h: str, p: str, i: int) -> str:
    """Causal self-attention over past + new positions: present = [batch, n_head, total | capacity, head_dim]."""
    qkv = linear.matmul(g, h, p + "attn.c_attn.weight", p + "attn.c_attn.bias")  # [batch, seq, 3*n_embd]
    return linear.matmul(g, attend(g, qkv, i), p + "attn.c_proj.weight", p + "attn.c_proj.bias")  # [batch, seq, n_embd]
