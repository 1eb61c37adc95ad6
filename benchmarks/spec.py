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
SMOKE = BenchSpec(
    decode_prompt=8,
    new_tokens=8,
    ttft_prompts=(8, 32),
    batches=(4,),
    reps=1,
    batch_reps=1,
    warmup=1,
    cold_reps=1,
    rounds=1,
)


@dataclass(frozen=True)
class ServeSpec:
    """`bench --only serve`: the load of issue 12's benchmark on the full-size distil architecture."""

    levels: tuple[int, ...] = (1, 8, 32, 64)  # concurrent streaming clients
    prompt_tokens: int = 32  # every prompt, the family's prefix included; each request its own
    max_tokens: int = 64  # new tokens of every request (min_new_tokens too: no early stop)
    requests_per_client: int = 2  # sent back to back, so a level's load is steady, not one burst
    warmup_tokens: int = 8  # one warm-up wave at the top level, this short
    target_level: int = 32  # where the throughput targets are checked (offline batch of this size)
    itl_level: int = 8  # where the p99 inter-token target is checked, and the long prompt arrives
    long_prompt_tokens: int = 900
    long_max_tokens: int = 16
    prefill_chunk: int = 256  # the server's --prefill-chunk
    offline_reps: int = 3  # timed repetitions of each offline (Generator) figure; the median is reported
    timeout_s: float = 600.0  # bound on any one load run (and any one server start)

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(self.levels))


# the tiny model has 128 positions: a shorter "long" prompt, a smaller chunk, levels 1 and 4
SMOKE_SERVE = ServeSpec(
    levels=(1, 4),
    max_tokens=16,
    requests_per_client=1,
    warmup_tokens=2,
    target_level=4,
    itl_level=4,
    long_prompt_tokens=96,
    long_max_tokens=4,
    prefill_chunk=32,
    offline_reps=1,
    timeout_s=120.0,
)
