"""What verifying proposals for a whole batch in one pass would cost with the attention
kernels onnxruntime's CPU provider has, against what the engine does instead.

The runtime's graph attends with GroupQueryAttention, which refuses several new tokens
after a past for more than one row ("batch_size must be 1 when sequence_length > 1 and
past context is given"), so the engine verifies proposals only while one row decodes. The
one kernel that takes such a batch and keeps the cache in place is ONNX's own Attention
(opset 24) with `nonpad_kv_seqlen`, over the buffer that TensorScatter writes at each
row's length. This module rewrites the INT8 `kv_buffer` graph that way (every
GroupQueryAttention → TensorScatter × 2 + Attention), checks its logits against one-row
verification passes, and times at batch 8, rows at different lengths:

- a plain decode step of the runtime's graph (one token per row);
- a one-row verification pass of k + 1 tokens (what the engine runs, row by row);
- one rewritten pass over every row's k + 1 tokens,

at two cache capacities and two proposal lengths, in interleaved rounds.

`break_even_tokens_per_pass`: how many tokens a row must gain per batched pass for it to
beat plain steps (pass time / step time); the speculative benchmark sets each task's
measured tokens per pass against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from gpt2_onnx import Generator
from gpt2_onnx.graph_io import INPUT_IDS, LOGITS_TO_KEEP, POSITION_IDS, SEQLENS_K, TOTAL_SEQUENCE_LENGTH
from gpt2_onnx.manifest import read_manifest
from gpt2_onnx.session import Decoder, bind_in_place, create_session

from .speed import best_of
from .worker import median_time

ROWS = 8
WRITE_INDICES, NONPAD = "write_indices", "nonpad_kv_seqlen"  # [rows] int64 each: lengths before / after the pass


def scatter_attention_model(path: Path, n_head: int) -> bytes:
    """The kv_buffer graph at `path` with each GroupQueryAttention replaced by TensorScatter
    (new keys and values into the buffer at `write_indices`, in place when bound so) and
    Attention over the first `nonpad_kv_seqlen` positions, causal from each row's end."""
    model = onnx.load(str(path))  # with its weights: the rewritten graph is passed as bytes
    graph, nodes, count = model.graph, [], 0

    def op(op_type, inputs, outputs: int | list[str] = 1, **attrs):
        nonlocal count
        count += 1
        names = outputs if isinstance(outputs, list) else [f"scatter_{op_type}_{count}_{i}" for i in range(outputs)]
        nodes.append(helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if len(names) == 1 else names

    def const(values):
        return op("Constant", [], value=helper.make_tensor(f"c{count}", onnx.TensorProto.INT64, [len(values)], values))

    heads, merged = const([0, 0, n_head, -1]), const([0, 0, -1])
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        # the runtime's form: packed QKV, no rotary, default scale
        assert list(node.input[1:3]) == ["", ""] and {a.name for a in node.attribute} == {
            "num_heads",
            "kv_num_heads",
        }, node
        qkv, past_key, past_value = node.input[0], node.input[3], node.input[4]
        context, present_key, present_value = node.output
        q, k, v = (
            op("Transpose", [op("Reshape", [part, heads])], perm=[0, 2, 1, 3])  # [rows, n_head, seq, head_dim]
            for part in op("Split", [qkv], 3, axis=2, num_outputs=3)
        )
        op("TensorScatter", [past_key, k, WRITE_INDICES], [present_key], axis=2)
        op("TensorScatter", [past_value, v, WRITE_INDICES], [present_value], axis=2)
        attended = op("Attention", [q, present_key, present_value, "", "", "", NONPAD], is_causal=1)
        op("Reshape", [op("Transpose", [attended], perm=[0, 2, 1, 3]), merged], [context])
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.input if i.name not in (SEQLENS_K, TOTAL_SEQUENCE_LENGTH)]
    del graph.input[:]
    graph.input.extend(
        kept
        + [helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch_size"]) for n in (WRITE_INDICES, NONPAD)]
    )
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 24  # TensorScatter and Attention's nonpad_kv_seqlen
    model.ir_version = max(model.ir_version, 11)
    return model.SerializeToString()


class _ScatterCall:
    """The rewritten graph bound to the first `rows` rows of a cache, for `seq` tokens per row."""

    def __init__(self, session: ort.InferenceSession, decoder: Decoder, buffers: list[np.ndarray], seq: int):
        rows = buffers[0].shape[0]
        self.session, self.seq = session, seq
        self.ids = np.zeros((rows, seq), np.int64)
        self.positions = np.zeros((rows, seq), np.int64)
        self.write, self.nonpad = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
        self.logits = np.empty((rows, seq, decoder.architecture.vocab_size), np.float32)
        inputs = {
            INPUT_IDS: self.ids,
            POSITION_IDS: self.positions,
            WRITE_INDICES: self.write,
            NONPAD: self.nonpad,
            LOGITS_TO_KEEP: np.array(seq, np.int64),
        }
        self.binding = bind_in_place(session, decoder, inputs, self.logits, buffers)

    def __call__(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """ids [rows, seq] after each row's `lengths` → logits [rows, seq, vocab]; lengths are not advanced."""
        self.ids[:] = ids
        self.positions[:] = lengths[:, None] + np.arange(self.seq)
        self.write[:], self.nonpad[:] = lengths, lengths + self.seq
        self.session.run_with_iobinding(self.binding)
        return self.logits


class _Variant:
    """One precision's decoder and its graph rewritten (each loaded once for every shape)."""

    def __init__(self, model_dir: Path, precision: str, threads: int):
        gen = Generator.load(model_dir, precision=precision, threads=threads)
        self.decoder, self.architecture = gen.decoder, gen.manifest.architecture
        graph = model_dir / gen.manifest.variants[precision].graph().file
        self.scatter = create_session(scatter_attention_model(graph, self.architecture.n_head), threads)


class _Setup:
    """A cache of ROWS rows at different lengths, the rewritten graph bound to it and one-row
    verification logits of the same proposals."""

    def __init__(self, variant: _Variant, capacity: int, seq: int, past: int):
        self.decoder, vocab = variant.decoder, variant.architecture.vocab_size
        rng = np.random.default_rng(0)
        self.lengths = past - past // (2 * ROWS) * np.arange(ROWS)  # from past down to about past / 2
        self.ids = rng.integers(vocab // 2, vocab, (ROWS, seq))
        self.cache = self.decoder.empty(ROWS, capacity)
        for r, n in enumerate(self.lengths):
            self.decoder.run(self.cache, r, rng.integers(vocab // 2, vocab, (1, n)))
        self.cache.lengths[:] = self.lengths
        self.reference = np.stack([self.one_row(r) for r in range(ROWS)])
        self.call = _ScatterCall(variant.scatter, self.decoder, [b[:ROWS] for b in self.cache.full], seq)

    def one_row(self, r: int) -> np.ndarray:
        logits = self.decoder.run(self.cache, r, self.ids[r : r + 1], every_position=True)[0]
        self.cache.lengths[r] = self.lengths[r]
        return logits

    def step(self) -> None:
        self.decoder.step(self.cache, self.ids[:, 0])
        self.cache.lengths[:] = self.lengths

    def batched(self) -> np.ndarray:
        return self.call(self.ids, self.lengths)

    def difference(self) -> float:
        return float(np.abs(self.batched() - self.reference).max())


def _best_of_rounds_ms(fns: dict[str, Callable[[], object]], reps: int, rounds: int = 3) -> dict[str, float]:
    """Median ms of each function over `reps` calls a round, rounds interleaving the functions;
    each figure its best round's (a slow spell of the shared machine only ever adds time)."""
    best: dict[str, float] | None = None
    for _ in range(rounds):
        ms = {name: 1e3 * median_time(fn, max(1, reps // rounds), warmup=1) for name, fn in fns.items()}
        best = ms if best is None else best_of(best, ms)
    return best


def batched_verification_cost(
    model_dir: Path,
    threads: int,
    reps: int,
    proposals: Sequence[int],
    capacities: Sequence[int] = (512, 1024),
    past: int = 256,
) -> dict:
    """For each cache capacity and number of proposed tokens k: ms of a plain batch-8 INT8 step,
    a one-row pass of k + 1 tokens and one rewritten batch-8 pass of k + 1 tokens per row after
    about `past` tokens. Also the rewritten graph's largest logit difference from one-row
    passes in FP32 (is it the same function?) and in INT8 (where per-token activation
    rounding can turn a 1e-7 difference into a step)."""
    positions = read_manifest(model_dir).architecture.n_positions
    capacities = [c for c in capacities if c <= positions] or [positions]
    past = min(past, capacities[0] // 2)
    check = _Setup(_Variant(model_dir, "fp32", threads), capacities[0], max(proposals) + 1, past).difference()
    int8, results = _Variant(model_dir, "int8", threads), []
    for capacity in capacities:
        for k in proposals:
            s = _Setup(int8, capacity, k + 1, past)
            ms = _best_of_rounds_ms({"step": s.step, "row": lambda s=s: s.one_row(0), "batched": s.batched}, reps)
            results.append(
                {
                    "capacity": capacity,
                    "tokens_per_row": k + 1,
                    "step_ms": ms["step"],
                    "one_row_pass_ms": ms["row"],
                    "batched_pass_ms": ms["batched"],
                    "int8_max_logit_difference": s.difference(),
                    "break_even_tokens_per_pass": ms["batched"] / ms["step"],
                    "row_by_row_break_even": ROWS * ms["row"] / ms["step"],
                }
            )
    return {"rows": ROWS, "past": past, "fp32_max_logit_difference": check, "by_shape": results}


def batched_markdown(b: dict, tasks: dict[str, dict], k: int) -> list[str]:
    """Report lines: the table, and what each task's measured tokens per pass (with up to `k`
    proposals) says against the break-even of a pass of k + 1 tokens at the largest capacity."""
    lines = [
        f"Verifying a batch in one pass (full-size INT8, {b['rows']} rows at different lengths, about {b['past']} "
        "tokens each; ONNX Attention + TensorScatter in place of GroupQueryAttention, which refuses several tokens "
        "after a past for more than one row):",
        "",
        "| cache capacity | tokens per row | plain step (8 tokens) | one-row pass | batched pass "
        "| tokens per pass to break even: batched | row by row | largest INT8 logit difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in b["by_shape"]:
        lines.append(
            f"| {c['capacity']} | {c['tokens_per_row']} | {c['step_ms']:.2f} ms | {c['one_row_pass_ms']:.2f} ms | "
            f"{c['batched_pass_ms']:.2f} ms | {c['break_even_tokens_per_pass']:.2f} | {c['row_by_row_break_even']:.2f} "
            "| "
            f"{c['int8_max_logit_difference']:.1e} |"
        )
    largest = max(c["capacity"] for c in b["by_shape"])
    shape = next(c for c in b["by_shape"] if c["capacity"] == largest and c["tokens_per_row"] == k + 1)
    verdicts = [
        f"{name} keeps {t['tokens_per_pass']:.2f} tokens per pass: a batched pass would "
        + ("save time" if t["tokens_per_pass"] > shape["break_even_tokens_per_pass"] else "cost time")
        for name, t in tasks.items()
    ]
    worst = max(c["int8_max_logit_difference"] for c in b["by_shape"])
    lines += [
        "",
        f"With up to {k} proposals (passes of {k + 1} tokens) at capacity {largest}, break-even is "
        f"{shape['break_even_tokens_per_pass']:.2f} tokens per pass; {'; '.join(verdicts)}. "
        f"The rewritten graph computes the runtime's function (FP32 logits within "
        f"{b['fp32_max_logit_difference']:.1e} of one-row passes), but in INT8 its logits differ by up to {worst:.2f}: "
        "verified through it, a batch would lose the identical output that one-row verification keeps up to float "
        "rounding.",
        "",
    ]
    return lines
