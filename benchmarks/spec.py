"""What a benchmark run measures."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchSpec:
    """Defaults: the figures of the benchmarks issue on the full-size distil architecture."""

    decode_prompt: int = 32  # prompt length for decode rate and batch throughput
    new_tokens: int = 128
    ttft_prompts: tuple[int, ...] = (32, 256, 896)
    batches: tuple[int, ...] = (8, 32)
    reps: int = 5  # timed repetitions of each batch-1 figure; the median is reported
    batch_reps: int = 3
    warmup: int = 2
    cold_reps: int = 3
    rounds: int = 2  # every engine measured this many times, interleaved; each figure is the best round's

    def __post_init__(self):
        object.__setattr__(self, "ttft_prompts", tuple(self.ttft_prompts))
        object.__setattr__(self, "batches", tuple(self.batches))


# CI's smoke run: the tiny model (128 positions), one repetition, seconds per engine
SMOKE = BenchSpec(decode_prompt=8, new_tokens=8, ttft_prompts=(8, 32), batches=(4,), reps=1, batch_reps=1, warmup=1, cold_reps=1, rounds=1)
