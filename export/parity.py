"""`check_model`: every variant of a model directory against transformers + torch.

Same inputs on both sides, through the runtime's decoder: every position of a prompt
batch, decode steps with the cache, and a batch of prompts of different lengths
(left-padded on torch's side); then greedy agreement over 64 new tokens from the
runtime's own decode loop. FP32's `model.onnx`, the graph other tools load, is checked
too: a padded prompt batch, then a decode step fed its own `present` as `past`. Each
variant's figures come with a verdict against its quality gate (`GATES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2_onnx.errors import SourceError
from gpt2_onnx.generator import Generator
from gpt2_onnx.graph_io import (
    ATTENTION_MASK,
    INPUT_IDS,
    IO_PAST_KEY_VALUES,
    LOGITS,
    POSITION_IDS,
    cache_names,
    past_name,
)
from gpt2_onnx.session import create_session

FP32_TOLERANCE = 1e-3
GREEDY_TOKENS = 64


@dataclass(frozen=True)
class Gate:
    """What a quantized variant's figures must meet. The logit error is its root mean square
    over the prefill relative to the spread (standard deviation) of torch's logits, so one
    gate fits checkpoints whose logits are far apart or close together (the maximum over a
    whole vocabulary is too rare an event to gate on). Greedy agreement is no gate: with
    random weights the best two logits are often nearly tied, so one rounding flips a token
    and the rest of the sequence diverges; top-1 agreement over the prefill positions counts
    each position once instead."""

    max_relative_error: float
    min_top1: float  # share of prefill positions whose best token equals torch's


# Measured on the random-weight checkpoints of the tests (relative error, top-1): INT8 tiny
# 0.05, 94 %; full-size 0.14, 88 %; INT8 with every weight scale doubled 1.4, 19 %. INT4
# (asymmetric searched blocks, 8-bit embedding / LM head) tiny 0.24, 69 %; full-size 0.42, 34 %
# (symmetric absmax blocks before: 0.36, 47 %; 0.53, 22 %). Random weights amplify quantization
# error far beyond a trained model's (see the bench quality report), so these gates catch a
# broken quantizer, not a small loss of quality.
GATES = {"int8": Gate(max_relative_error=0.25, min_top1=0.75), "int4": Gate(max_relative_error=0.5, min_top1=0.25)}


@dataclass(frozen=True)
class VariantReport:
    precision: str
    prefill_max_abs: float  # max |Δlogit| over every position of a 2-row prompt batch
    decode_max_abs: float  # last-position logits of the prefill, then of 4 decode steps with the cache
    padded_max_abs: float  # last-position logits of 3 prompts of different lengths in one batch
    greedy_agreement: int  # new tokens identical to torch's greedy before the first difference
    greedy_tokens: int
    prefill_relative_error: float  # rms Δlogit over the prefill / std of torch's prefill logits
    prefill_top1: float  # share of the prefill positions whose argmax equals torch's

    ecosystem_max_abs: float | None = None  # model.onnx (past_key_values), when the variant has it

    def verdict(self) -> str:
        """ "ok" / "within INT8 gate", or what failed; "" for a precision without a gate."""
        if self.precision == "fp32":
            failed = [f"max |Δlogit| > {FP32_TOLERANCE}"] * (self.max_abs > FP32_TOLERANCE)
            failed += ["greedy differs"] * (self.greedy_agreement < self.greedy_tokens)
            return "ok" if not failed else f"outside FP32 gate ({', '.join(failed)})"
        gate = GATES.get(self.precision)
        if gate is None:
            return ""
        error, limit = self.prefill_relative_error, gate.max_relative_error
        failed = [f"relative error {error:.2g} > {limit:g}"] * (error > limit)
        failed += [f"top-1 {self.prefill_top1:.0%} < {gate.min_top1:.0%}"] * (self.prefill_top1 < gate.min_top1)
        name = self.precision.upper()
        return f"within {name} gate" if not failed else f"outside {name} gate ({', '.join(failed)})"

    def line(self) -> str:
        ecosystem = "" if self.ecosystem_max_abs is None else f"  model.onnx {self.ecosystem_max_abs:.2e}"
        return (
            f"{self.precision:>5}  prefill {self.prefill_max_abs:.2e}  decode {self.decode_max_abs:.2e}  "
            f"padded batch {self.padded_max_abs:.2e}{ecosystem}  greedy {self.greedy_agreement}/{self.greedy_tokens} "
            "identical  "
            f"relative error {self.prefill_relative_error:.1e}  top-1 {self.prefill_top1:.0%}  {self.verdict()}"
        ).rstrip()

    @property
    def max_abs(self) -> float:
        return max(self.prefill_max_abs, self.decode_max_abs, self.padded_max_abs, self.ecosystem_max_abs or 0.0)


def check_model(
    model_dir: str | Path, source: str | Path, variants: tuple[str, ...] | None = None
) -> list[VariantReport]:
    """Compare each variant (default: all in the manifest) with the checkpoint at `source`."""
    import torch
    from transformers import GPT2LMHeadModel

    from .checkpoint import resolve_source

    checkpoint_path, _, _ = resolve_source(str(source))
    torch_model = GPT2LMHeadModel.from_pretrained(
        checkpoint_path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    reports = []
    fp32 = Generator.load(model_dir, precision="fp32")
    if torch_model.config.vocab_size != fp32.manifest.architecture.vocab_size:
        raise SourceError(
            f"{source} has vocabulary size {torch_model.config.vocab_size}, the model directory "
            f"{fp32.manifest.architecture.vocab_size}: they are different models"
        )
    for precision in variants or tuple(fp32.manifest.variants):
        generator = fp32 if precision == "fp32" else Generator.load(model_dir, precision=precision)
        reports.append(_check_variant(generator, torch_model))
    return reports


def require_fp32_parity(reports: list[VariantReport]) -> None:
    for r in reports:
        if r.precision == "fp32" and r.max_abs > FP32_TOLERANCE:
            raise SourceError(f"the exported FP32 graph differs from torch beyond {FP32_TOLERANCE}: {r.line()}")


def _torch_logits(model, ids, mask, positions, past=None):
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
            past_key_values=past,
            use_cache=True,
        )
    return out.logits.numpy(), out.past_key_values


def _check_variant(generator: Generator, torch_model) -> VariantReport:
    decoder, a = generator.decoder, generator.manifest.architecture
    rng = np.random.default_rng(0)
    vocab, prompt_len = a.vocab_size, min(16, a.n_positions // 4)

    ids = rng.integers(0, vocab, (2, prompt_len))
    mask, positions = np.ones_like(ids), np.tile(np.arange(prompt_len), (2, 1))
    theirs, past = _torch_logits(torch_model, ids, mask, positions)
    scores = decoder.score(ids)  # [2, prompt_len, vocab]
    prefill = float(np.abs(scores - theirs).max())
    relative = float(np.sqrt(np.mean((scores - theirs) ** 2)) / theirs.std())
    top1 = float((scores.argmax(-1) == theirs.argmax(-1)).mean())

    cache, ours = decoder.prefill(ids.tolist(), prompt_len + 4)
    decode = float(np.abs(ours - theirs[:, -1]).max())
    for step in range(4):
        token = theirs[:, -1].argmax(-1)
        mask = np.ones((2, prompt_len + step + 1), np.int64)
        ours = decoder.step(cache, token)
        theirs, past = _torch_logits(torch_model, token[:, None], mask, np.full((2, 1), prompt_len + step), past)
        decode = max(decode, float(np.abs(ours - theirs[:, -1]).max()))

    lengths = [prompt_len, prompt_len // 2 + 1, 3]
    ids = rng.integers(0, vocab, (3, prompt_len))
    mask = np.array([[0] * (prompt_len - n) + [1] * n for n in lengths])
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    _, ours = decoder.prefill([row[prompt_len - n :].tolist() for row, n in zip(ids, lengths)], prompt_len)
    theirs, _ = _torch_logits(torch_model, ids, mask, positions)
    padded = float(np.abs(ours - theirs[:, -1]).max())

    agreement, steps = _greedy_agreement(generator, torch_model)
    variant = generator.manifest.variants[generator.precision]
    ecosystem = None
    if any(g.io == IO_PAST_KEY_VALUES for g in variant.graphs):
        ecosystem = _ecosystem_max_abs(generator.model_dir / variant.graph(IO_PAST_KEY_VALUES).file, a, torch_model)
    return VariantReport(generator.precision, prefill, decode, padded, agreement, steps, relative, top1, ecosystem)


def _ecosystem_max_abs(graph, a, torch_model) -> float:
    """The past_key_values graph on a left-padded prompt batch, then one step on its own present."""
    session = create_session(graph, None)
    names = cache_names(a.n_layer, past_name)
    rng = np.random.default_rng(1)
    n = min(12, a.n_positions // 4)
    ids = rng.integers(0, a.vocab_size, (2, n))
    mask = np.array([[1] * n, [0] * (n // 2) + [1] * (n - n // 2)])
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    empty = np.zeros((2, a.n_head, 0, a.head_dim), np.float32)
    feeds = {INPUT_IDS: ids, ATTENTION_MASK: mask, POSITION_IDS: positions, **{k: empty for k in names}}
    ours, *present = session.run(None, feeds)
    theirs, past = _torch_logits(torch_model, ids, mask, positions)
    worst = float(np.abs((ours - theirs) * mask[..., None]).max())  # padded positions are not compared
    token = theirs[:, -1].argmax(-1)[:, None]
    mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    feeds = {INPUT_IDS: token, ATTENTION_MASK: mask, POSITION_IDS: positions[:, -1:] + 1, **dict(zip(names, present))}
    ours = session.run([LOGITS], feeds)[0]
    theirs, _ = _torch_logits(torch_model, token, mask, positions[:, -1:] + 1, past)
    return max(worst, float(np.abs(ours - theirs).max()))


def _greedy_agreement(generator: Generator, torch_model) -> tuple[int, int]:
    """New tokens of our greedy decode equal to torch's, counted up to the first difference."""
    a = generator.manifest.architecture
    steps = min(GREEDY_TOKENS, a.n_positions // 2)
    prompt = generator.codec.encode("这是很久之前的事情了。The quick brown fox 1234")[: a.n_positions // 4]
    ours = generator.generate_ids(prompt, max_new_tokens=steps, do_sample=False, stop_token_ids=()).token_ids
    ids = np.array([prompt])
    mask, positions = np.ones_like(ids), np.arange(len(prompt))[None]
    theirs, past = [], None
    for _ in range(steps):
        logits, past = _torch_logits(torch_model, ids, mask, positions, past)
        token = int(logits[0, -1].argmax())
        theirs.append(token)
        ids, positions = np.array([[token]]), positions[:, -1:] + 1
        mask = np.ones((1, mask.shape[1] + 1), np.int64)
    same = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), steps)
    return same, steps
