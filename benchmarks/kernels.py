"""INT8 and INT4 matmul kernels side by side: what batch-invariant activations cost.

onnxruntime's `DynamicQuantizeMatMul` quantizes a whole input with one scale, so a row's
result depends on the other rows (the INT8 graphs used it until per-token quantization).
Every candidate here is measured on the same weights, in one process, twice over:

- weights only: one decode step's 25 weight matmuls (as `ceiling`) at 1, 8 and 256 rows;
- whole graph: the model's INT8 `kv_buffer` graph, decode ms per step at batch 1 and 8,
  and whether a row's logits are bit-identical alone and in a batch.

The exporter keeps the fastest batch-invariant strategy (`Int8Linear`). The INT4 rows
(`MatMulNBits`, blocks of 32 as exported and of 128) run a lone row with the one-row kernel,
as the runtime does where its load-time probe finds that exact (`session.lone_row_is_exact`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from gpt2_onnx.export.checkpoint import load_checkpoint
from gpt2_onnx.export.graph import MS_DOMAIN, GraphWriter
from gpt2_onnx.export.quantize import Int8Linear, quantize_tokens
from gpt2_onnx.export.quantize_blockwise import Int4Linear
from gpt2_onnx.precisions import Blockwise
from gpt2_onnx.session import create_session

from .ceiling import weights_only_model
from .error_share import in_memory_decoder
from .speed import best_of
from .worker import median_time

ROWS = (1, 8, 256)


class PerTensorInt8(Int8Linear):
    """The old INT8 matmul: one activation scale per call (DynamicQuantizeMatMul)."""

    def _per_token(self, g: GraphWriter, x: str, q: str, scale: str, zero: str) -> str:
        return g.op("DynamicQuantizeMatMul", [x, q, scale, zero], domain=MS_DOMAIN)


class PerTokenMatMulInteger(Int8Linear):
    """Per-token activations through the plain ONNX ops: MatMulInteger, Cast, two Muls."""

    def _per_token(self, g: GraphWriter, x: str, q: str, scale: str, zero: str) -> str:
        x_q, x_scale = quantize_tokens(g, x)
        product = g.op("MatMulInteger", [x_q, q, g.const(128, np.uint8), zero])
        return g.op("Mul", [g.op("Cast", [product], to=1), g.op("Mul", [x_scale, scale])])


class NBits8(Int8Linear):
    """MatMulNBits with 8-bit blocks of 32 (accuracy level 4: activations int8 per block of a row)."""

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        y = self._nbits(g, x, weight, g.weights[weight].T)
        return y if bias is None else g.op("Add", [y, g.weight(bias)])

    def lm_head(self, g: GraphWriter, x: str, weight: str) -> str:
        return self._nbits(g, x, weight, g.weights[weight])  # [vocab, n_embd] is already [out, in]

    def _nbits(self, g: GraphWriter, x: str, weight: str, w_t: np.ndarray) -> str:
        """x @ w_t.T with w_t [out, in] in symmetric 8-bit blocks of 32 along `in`."""
        out_features, in_features = w_t.shape
        blocks = w_t.reshape(out_features, in_features // 32, 32)
        scale = np.abs(blocks).max(-1) / 127
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        packed = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
        b, s = g.weight(weight + ".nbits8", packed), g.weight(weight + ".nbits8_scale", scale)
        return g.op(
            "MatMulNBits",
            [x, b, s],
            domain=MS_DOMAIN,
            K=in_features,
            N=out_features,
            bits=8,
            block_size=32,
            accuracy_level=4,
        )


STRATEGIES = {
    "per-tensor DynamicQuantizeMatMul (before)": PerTensorInt8,
    "per-token MatMulIntegerToFloat (exported)": Int8Linear,
    "per-token MatMulInteger + Cast + Mul": PerTokenMatMulInteger,
    "MatMulNBits 8-bit, accuracy 4": NBits8,
    "INT4: MatMulNBits 4-bit blocks of 32, 8-bit head (exported)": partial(Int4Linear, Blockwise(32)),
    "INT4: MatMulNBits 4-bit blocks of 128, 8-bit head": partial(Int4Linear, Blockwise(128)),
}


def _median_ms(fn, reps: int) -> float:
    return 1e3 * median_time(fn, reps, warmup=1)


def weights_only_ms(arch, linear, threads: int, reps: int) -> dict[str, float]:
    n_inner = 4 * arch.n_embd
    session = create_session(weights_only_model(arch, linear, n_inner).SerializeToString(), threads)
    rng = np.random.default_rng(0)
    result = {}
    for rows in ROWS:
        feeds = {
            "x": rng.normal(size=(rows, arch.n_embd)).astype(np.float32),
            "x_inner": rng.normal(size=(rows, n_inner)).astype(np.float32),
        }
        result[str(rows)] = _median_ms(
            lambda feeds=feeds: session.run(None, feeds), reps if rows < 256 else max(3, reps // 10)
        )
    return result


def whole_graph(checkpoint, linear, threads: int, reps: int) -> dict:
    """Decode ms per step at batch 1 and 8 after a 32-token prompt, and row invariance."""
    decoder = in_memory_decoder(checkpoint, linear, threads)
    rng = np.random.default_rng(0)
    vocab = checkpoint.spec.architecture.vocab_size
    result = {}
    for batch in (1, 8):
        prompts = [rng.integers(vocab // 2, vocab, 32).tolist() for _ in range(batch)]

        def decode(prompts=prompts):
            cache, logits = decoder.prefill(prompts, 32 + reps + 1)
            for _ in range(reps):
                logits = decoder.step(cache, logits.argmax(-1))

        result[f"decode_ms_batch_{batch}"] = _median_ms(decode, 3) / reps  # prefill is 1/reps of it at most
    rows = [rng.integers(vocab // 2, vocab, 12).tolist() for _ in range(3)]  # equal lengths: one call
    _, together = decoder.prefill(rows, 64)
    result["row_invariant"] = all(
        np.array_equal(together[r], decoder.prefill([row], 64)[1][0]) for r, row in enumerate(rows)
    )
    return result


def run_kernels(checkpoint: Path, threads: int, reps: int = 50, log=print) -> dict:
    """Every strategy, weights only and whole graph, interleaved in two rounds (best of each)."""
    ckpt = load_checkpoint(str(checkpoint))
    arch = ckpt.spec.architecture
    results: dict[str, dict] = {}
    for round_ in range(2):
        for name, strategy in STRATEGIES.items():
            log(f"kernels: {name} (round {round_ + 1} of 2)")
            measured = {
                "weights_only_ms": weights_only_ms(arch, strategy(), threads, reps),
                **whole_graph(ckpt, strategy(), threads, reps),
            }
            results[name] = (
                best_of(results[name], measured) if name in results else measured
            )  # row_invariant: min = and
    return {"architecture": arch.__dict__, "threads": threads, "strategies": results}


def kernels_markdown(doc: dict, command: str, machine: dict) -> str:
    lines = [
        "# INT8 and INT4 kernels: the cost of batch-invariant activations",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']} ({machine.get('isa', '?')}), {doc['threads']} threads  ",
        "Weights only: the 25 weight matmuls of one decode step; whole graph: decode ms per step after a 32-token "
        "prompt. Medians, best of two interleaved rounds.",
        "",
        "| strategy | row-invariant | weights only, 1 row ms | 8 rows ms | 256 rows ms | decode batch 1 ms | decode "
        "batch 8 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in doc["strategies"].items():
        w = r["weights_only_ms"]
        lines.append(
            f"| {name} | {'yes' if r['row_invariant'] else 'no'} | {w['1']:.2f} | {w['8']:.2f} | {w['256']:.1f} | "
            f"{r['decode_ms_batch_1']:.2f} | {r['decode_ms_batch_8']:.2f} |"
        )
    return "\n".join(lines) + "\n"
