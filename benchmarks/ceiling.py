"""The weights-only ceiling: one decode step's weight matmuls alone, in onnxruntime.

A graph of just the 4 matmuls of every block plus the LM head (each precision's own LM
head: INT4 keeps it at 8 bits), at batch 1, with the same kernels our graphs use
(`Fp32Linear`, `Int8Linear`, `Int4Linear`). No engine can decode faster than this on the
machine, so ceiling time / an engine's per-token time is its efficiency.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from onnx import TensorProto, helper

from gpt2_onnx.export.api import linear_for
from gpt2_onnx.export.graph import MS_DOMAIN, OPSET, GraphWriter, Linear
from gpt2_onnx.manifest import Architecture
from gpt2_onnx.session import create_session


def weights_only_model(a: Architecture, linear: Linear, n_inner: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = {"lm_head": (a.vocab_size, a.n_embd)}  # [vocab, n_embd], as the tied embedding / LM head is stored
    for i in range(a.n_layer):
        shapes.update(
            {
                f"h.{i}.attn.c_attn.weight": (a.n_embd, 3 * a.n_embd),
                f"h.{i}.attn.c_proj.weight": (a.n_embd, a.n_embd),
                f"h.{i}.mlp.c_fc.weight": (a.n_embd, n_inner),
                f"h.{i}.mlp.c_proj.weight": (n_inner, a.n_embd),
            }
        )
    weights = {name: rng.normal(0, 0.02, shape).astype(np.float32) for name, shape in shapes.items()}
    g = GraphWriter(weights)
    outputs = []
    for name, (rows, _) in shapes.items():
        x = "x" if rows == a.n_embd else "x_inner"  # [1, n_embd] or [1, n_inner]
        y = linear.lm_head(g, "x", name) if name == "lm_head" else linear.matmul(g, x, name, None)
        outputs.append(g.op("Identity", [y], outputs=[name + ".out"]))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", a.n_embd]),
        helper.make_tensor_value_info("x_inner", TensorProto.FLOAT, ["rows", n_inner]),
    ]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(g.nodes, "weights_only", inputs, outs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    return model


def ceiling_ms(a: Architecture, precision: str, threads: int, reps: int = 200) -> float:
    """Median time of one decode step's weight matmuls, in milliseconds."""
    n_inner = 4 * a.n_embd  # GPT-2's MLP width
    session = create_session(weights_only_model(a, linear_for(precision), n_inner).SerializeToString(), threads)
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.normal(size=(1, a.n_embd)).astype(np.float32),
        "x_inner": rng.normal(size=(1, n_inner)).astype(np.float32),
    }
    for _ in range(20):
        session.run(None, feeds)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
