"""INT8 and INT4 matmul kernels side by side: what batch-invariant activations cost, on this CPU.

onnxruntime's `DynamicQuantizeMatMul` quantizes a whole input with one scale, so a row's
result depends on the other rows (the INT8 graphs used it until per-token quantization).
Every candidate here is measured on the same weights, in one process, twice over:

- weights only: one decode step's 25 weight matmuls (as `ceiling`) at 1, 8 and 256 rows;
- whole graph: the model's `kv_buffer` graph, decode ms per step (prefill excluded) at batch 1
  as the runtime runs it and at batch 8, time to first token of a 256-token prompt, whether
  a row's logits are bit-identical alone and in a batch, and whether a lone row is exact in
  one-row calls (`session.lone_row_is_exact`: where not, the runtime runs a scratch row beside it);
- the profile of the exported INT8 and INT4 decode steps: milliseconds in each op type.

The exporter keeps the fastest batch-invariant strategy (`Int8Linear`). onnxruntime picks
its kernels by CPU, so each instruction set's run is its own report (`report_name`)."""

from __future__ import annotations

import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from gpt2_onnx.export.checkpoint import load_checkpoint
from gpt2_onnx.export.graph import MS_DOMAIN, GraphWriter
from gpt2_onnx.export.quantize import Int8Linear, quantize_tokens
from gpt2_onnx.export.quantize_blockwise import Int4Linear
from gpt2_onnx.precisions import BY_NAME, Blockwise
from gpt2_onnx.session import Decoder, create_session, probed_decoder

from .ceiling import weights_only_model
from .error_share import in_memory_decoder
from .profile import op_times, profile_table, read_trace
from .speed import best_of
from .worker import median_time

ROWS = (1, 8, 256)
PROMPT, LONG_PROMPT = 32, 256  # decode after PROMPT tokens; time to first token of LONG_PROMPT


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


INT8_EXPORTED = "per-token MatMulIntegerToFloat (exported)"
INT4_EXPORTED = "INT4: MatMulNBits 4-bit blocks of 32, 8-bit head, accuracy 4 (exported)"
STRATEGIES = {
    "per-tensor DynamicQuantizeMatMul (before)": PerTensorInt8,
    INT8_EXPORTED: Int8Linear,
    "per-token MatMulInteger + Cast + Mul": PerTokenMatMulInteger,
    "MatMulNBits 8-bit, accuracy 4": NBits8,
    INT4_EXPORTED: partial(Int4Linear, Blockwise(32)),
    "INT4: blocks of 32, accuracy 0 (FP32 activations)": partial(Int4Linear, Blockwise(32, accuracy_level=0)),
    "INT4: blocks of 128, accuracy 4": partial(Int4Linear, Blockwise(128)),
}
PROFILED = {"INT8": INT8_EXPORTED, "INT4": INT4_EXPORTED}


def report_name(machine: dict) -> str:
    """kernels-<instruction set>: a report per CPU family, e.g. kernels-avx2, kernels-avx-512-vnni."""
    return "kernels-" + machine["isa"].lower().replace(" ", "-")


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


def as_run(decoder: Decoder) -> Decoder:
    """The decoder as the runtime loads INT4 (`min_call_rows`): a lone row alone where the probe finds
    it exact on this CPU, else beside a scratch row. Every strategy is probed so."""
    return probed_decoder(decoder.session, decoder.architecture, BY_NAME["int4"].min_call_rows)


def _prompts(vocab: int, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(vocab // 2, vocab, length).tolist() for _ in range(batch)]


def step_ms(decoder: Decoder, batch: int, steps: int) -> float:
    """Median over 3 runs of ms per decode step at `batch` rows after a PROMPT-token prompt (prefill not timed)."""
    prompts = _prompts(decoder.architecture.vocab_size, batch, PROMPT)

    def steps_after_prefill() -> float:
        cache, logits = decoder.prefill(prompts, PROMPT + steps + 1)
        start = time.perf_counter()
        for _ in range(steps):
            logits = decoder.step(cache, logits.argmax(-1))
        return 1e3 * (time.perf_counter() - start) / steps

    return float(np.median([steps_after_prefill() for _ in range(3)]))


def whole_graph(checkpoint, linear, threads: int, reps: int) -> dict:
    """Decode ms per step at batch 1 (as run) and 8, time to first token, row invariance, the probe."""
    decoder = in_memory_decoder(checkpoint, linear, threads)
    run = as_run(decoder)
    long_prompt = _prompts(decoder.architecture.vocab_size, 1, min(LONG_PROMPT, decoder.architecture.n_positions))
    result = {
        "lone_row_exact": run.min_rows == 1,
        "decode_ms_batch_1": step_ms(run, 1, reps),
        "decode_ms_batch_8": step_ms(run, 8, reps),
        "ttft_ms": _median_ms(lambda: decoder.prefill(long_prompt, len(long_prompt[0])), 3),
    }
    rows = _prompts(decoder.architecture.vocab_size, 3, 12)  # equal lengths: one call
    _, together = decoder.prefill(rows, 64)
    result["row_invariant"] = all(
        np.array_equal(together[r], decoder.prefill([row], 64)[1][0]) for r, row in enumerate(rows)
    )
    return result


def step_profile(checkpoint, linear, threads: int, steps: int) -> dict:
    """Where a batch-1 decode step's time goes, as the runtime runs it (`op_times`)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = as_run(in_memory_decoder(checkpoint, linear, threads, profile_prefix=f"{tmp}/step"))
        cache, logits = run.prefill(_prompts(run.architecture.vocab_size, 1, PROMPT), PROMPT + steps + 1)
        for _ in range(steps):
            logits = run.step(cache, logits.argmax(-1))
        # the probe's runs come first: every run up to this prompt's prefill is left out
        trace = read_trace(run.session.end_profiling())
    return op_times(trace, skip_runs=len([e for e in trace if e.get("name") == "model_run"]) - steps)


def run_kernels(checkpoint: Path, threads: int, reps: int = 50, log=print) -> dict:
    """Every strategy, weights only and whole graph, interleaved in two rounds (best of each),
    then the profile of the exported INT8 and INT4 decode steps."""
    ckpt = load_checkpoint(str(checkpoint))
    arch = ckpt.spec.architecture
    results: dict[str, dict] = {}
    for round_ in range(2):
        for name, strategy in STRATEGIES.items():
            log(f"kernels: {name} (round {round_ + 1} of 2)")
            try:
                measured = {
                    "weights_only_ms": weights_only_ms(arch, strategy(), threads, reps),
                    **whole_graph(ckpt, strategy(), threads, reps),
                }
            except ValueError as e:  # a block size the architecture cannot take (the smoke's tiny model)
                log(f"kernels: {name} skipped: {e}")
                continue
            # booleans (row_invariant, lone_row_exact): the lower, so both rounds must hold
            results[name] = best_of(results[name], measured) if name in results else measured
    log("kernels: profiling the exported decode steps")
    profiles = {label: step_profile(ckpt, STRATEGIES[name](), threads, reps) for label, name in PROFILED.items()}
    return {"architecture": arch.__dict__, "threads": threads, "strategies": results, "profiles": profiles}


def kernels_markdown(doc: dict, command: str, machine: dict) -> str:
    prefill = min(LONG_PROMPT, doc["architecture"]["n_positions"])
    lines = [
        f"# INT8 and INT4 kernels on {machine.get('isa', '?')}: the cost of batch-invariant activations",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']} ({machine.get('isa', '?')}), {doc['threads']} threads  ",
        "Weights only: the 25 weight matmuls of one decode step. Whole graph: decode ms per step after a "
        f"{PROMPT}-token prompt (the prefill not timed), a lone row as the runtime runs it (alone where its one-row "
        f"call is exact on this CPU, else beside a scratch row); time to first token of a {prefill}-token prompt. "
        "Medians, best of two interleaved rounds.",
        "",
        "| strategy | row-invariant | lone row exact alone | weights only, 1 row ms | 8 rows ms | 256 rows ms | "
        f"decode batch 1 ms | decode batch 8 ms | TTFT {prefill} ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    yes = {True: "yes", False: "no"}
    for name, r in doc["strategies"].items():
        w = r["weights_only_ms"]
        lines.append(
            f"| {name} | {yes[r['row_invariant']]} | {yes[r['lone_row_exact']]} | {w['1']:.2f} | {w['8']:.2f} | "
            f"{w['256']:.1f} | {r['decode_ms_batch_1']:.2f} | {r['decode_ms_batch_8']:.2f} | {r['ttft_ms']:.1f} |"
        )
    lines += [
        "",
        "## Where a batch-1 decode step's time goes",
        "",
        "onnxruntime's profiler over the exported graphs' decode steps, as the runtime runs them (the profiler's "
        "own cost is in every node's time: compare shares, not with the table above).",
        "",
        *profile_table(doc["profiles"]),
    ]
    return "\n".join(lines) + "\n"
