"""Long-form generation and the prefix cache, measured in one process on one export.

- long form: 4,096 new tokens from a 32-token prompt (`context_overflow="slide"`, so the
  row re-encodes half its context every 512 tokens), decode tokens/s with every re-encoding
  included, against the short-form rate (128 new tokens) of the same run;
- prefix cache: time to first token of a 768-token prompt whose first 704 tokens an
  earlier prompt had (each repetition a new 64-token tail), against the same prompts cold,
  and the bytes the cache holds against its budget.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from gpt2_onnx import Generator
from gpt2_onnx.generator import DEFAULT_PREFIX_CACHE_MB

GREEDY = dict(do_sample=False, stop_token_ids=[])


def _ids(gen: Generator, rng: np.random.Generator, n: int) -> list[int]:
    """n ordinary ids (the upper half of the vocabulary)."""
    vocab = gen.manifest.architecture.vocab_size
    return rng.integers(vocab // 2, vocab, n).tolist()


def long_form(gen: Generator, reps: int, new_tokens: int = 4096, short_tokens: int = 128) -> dict:
    prefix = list(gen.manifest.conventions.prompt_prefix_ids)
    prompt = prefix + _ids(gen, np.random.default_rng(0), 32 - len(prefix))
    short_tokens = min(short_tokens, gen.manifest.architecture.n_positions - len(prompt))  # the smoke run's tiny model
    gen.generate_ids(prompt, max_new_tokens=short_tokens, **GREEDY)  # warm-up
    short = [
        gen.generate_ids(prompt, max_new_tokens=short_tokens, **GREEDY).timings.decode_tokens_per_s for _ in range(reps)
    ]
    long = [
        gen.generate_ids(
            prompt, max_new_tokens=new_tokens, context_overflow="slide", **GREEDY
        ).timings.decode_tokens_per_s
        for _ in range(max(1, reps // 2))
    ]
    short_rate, long_rate = statistics.median(short), statistics.median(long)
    return {
        "new_tokens": new_tokens,
        "short_form_tokens": short_tokens,
        "short_form_decode_tokens_per_s": short_rate,
        "long_form_decode_tokens_per_s": long_rate,
        "ratio": long_rate / short_rate,
    }


def prefix_cache(
    cold: Generator,
    model_dir: Path,
    precision: str,
    threads: int,
    reps: int,
    budget_mb: float = DEFAULT_PREFIX_CACHE_MB,
    prompt_tokens: int = 768,
    shared_tokens: int = 704,
) -> dict:
    """`cold`: a Generator of the model without a prefix cache; one with it is loaded here."""
    warm = Generator.load(model_dir, precision=precision, threads=threads, prefix_cache_mb=budget_mb)
    scale = min(1.0, cold.manifest.architecture.n_positions * 0.75 / prompt_tokens)  # the smoke run's tiny model
    prompt_tokens, shared_tokens = int(prompt_tokens * scale), int(shared_tokens * scale)
    rng = np.random.default_rng(1)
    shared = list(cold.manifest.conventions.prompt_prefix_ids) + _ids(cold, rng, shared_tokens - 1)
    warm.generate_ids(shared + _ids(cold, rng, prompt_tokens - shared_tokens), max_new_tokens=1, **GREEDY)

    def ttft(gen: Generator, ids: list[int]) -> float:
        start = time.perf_counter()
        gen.generate_ids(ids, max_new_tokens=1, **GREEDY)
        return time.perf_counter() - start

    tails = [_ids(cold, rng, prompt_tokens - shared_tokens) for _ in range(reps + 1)]
    ttft(cold, shared + tails[0])  # warm-up of the cold path
    cold_s = [ttft(cold, shared + tail) for tail in tails[1:]]
    warm_s = [ttft(warm, shared + tail) for tail in tails[1:]]
    stats = warm.prefix_cache.stats()
    cold_ttft, warm_ttft = statistics.median(cold_s), statistics.median(warm_s)
    return {
        "prompt_tokens": prompt_tokens,
        "shared_tokens": shared_tokens,
        "cold_ttft_ms": cold_ttft * 1e3,
        "warm_ttft_ms": warm_ttft * 1e3,
        "ratio": warm_ttft / cold_ttft,
        "cache_bytes": stats.bytes,
        "budget_bytes": stats.budget_bytes,
        "hit_tokens": stats.hit_tokens,
    }


def run_long_form(model_dir: Path, threads: int, reps: int = 5, precision: str = "int8") -> dict:
    gen = Generator.load(model_dir, precision=precision, threads=threads)
    return {
        "precision": precision,
        "threads": threads,
        "long_form": long_form(gen, reps),
        "prefix_cache": prefix_cache(gen, model_dir, precision, threads, reps),
    }


def long_form_markdown(doc: dict) -> str:
    lf, pc, command, machine = doc["long_form"], doc["prefix_cache"], doc["command"], doc["machine"]
    return "\n".join(
        [
            "# Long-form generation and the prefix cache",
            "",
            f"Command: `{command}`  ",
            f"Machine: {machine['cpu']} ({machine.get('isa', '?')}), {doc['threads']} threads; "
            f"{doc['precision'].upper()}, batch 1, greedy, medians.",
            "",
            "| measurement | figure | reference | ratio |",
            "|---|---|---|---|",
            f"| decode tok/s, {lf['new_tokens']:,} new tokens with sliding (every re-encoding included) | "
            f"{lf['long_form_decode_tokens_per_s']:.1f} | {lf['short_form_decode_tokens_per_s']:.1f} "
            f"(short form, {lf['short_form_tokens']} new tokens) | {lf['ratio']:.2f}× |",
            f"| time to first token, {pc['prompt_tokens']}-token prompt, first {pc['shared_tokens']} cached (ms) | "
            f"{pc['warm_ttft_ms']:.1f} | {pc['cold_ttft_ms']:.1f} (cold) | {pc['ratio']:.2f}× |",
            f"| prefix cache held (MB) | {pc['cache_bytes'] / 2**20:.1f} | {pc['budget_bytes'] / 2**20:.0f} (budget) | "
            f"{pc['cache_bytes'] / pc['budget_bytes']:.2f}× |",
            "",
        ]
    )
