"""One engine's measurements, in a process of its own (so imports, memory and threads
of one engine never touch another's). Prints one JSON object on its last stdout line."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from .engines import BY_NAME, random_prompts
from .spec import BenchSpec


def median_time(fn, reps: int, warmup: int = 0) -> float:
    """Median seconds of `reps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, unlike ru_maxrss, does not carry over the
    parent's peak across fork + exec."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def measure(
    engine_name: str, artifact: Path, threads: int, prefix_ids: list[int], vocab_size: int, spec: BenchSpec
) -> dict:
    """Warm up, then medians of: time to first token per prompt length, batch-1 decode rate,
    batch throughput. Decode per token = (time of N new tokens - time of 1) / (N - 1)."""
    generate = BY_NAME[engine_name].load(artifact, threads)
    prompt = random_prompts(prefix_ids, vocab_size, 1, spec.decode_prompt, seed=0)
    for _ in range(max(1, spec.warmup)):
        generate(prompt, spec.new_tokens)
    ttft = {}
    for length in spec.ttft_prompts:
        p = random_prompts(prefix_ids, vocab_size, 1, length, seed=length)
        generate(p, 1)  # first call at a new length allocates
        ttft[length] = median_time(lambda p=p: generate(p, 1), spec.reps)
    firsts, fulls = [], []
    for _ in range(spec.reps):
        firsts.append(median_time(lambda: generate(prompt, 1), 1))
        fulls.append(median_time(lambda: generate(prompt, spec.new_tokens), 1))
    per_token = (statistics.median(fulls) - statistics.median(firsts)) / (spec.new_tokens - 1)
    throughput = {}
    for batch in spec.batches:
        prompts = random_prompts(prefix_ids, vocab_size, batch, spec.decode_prompt, seed=batch)
        generate(prompts, 2)
        throughput[batch] = (
            batch
            * spec.new_tokens
            / median_time(lambda prompts=prompts: generate(prompts, spec.new_tokens), spec.batch_reps)
        )
    return {
        "decode_tokens_per_s": 1.0 / per_token,
        "decode_ms_per_token": per_token * 1e3,
        "time_to_first_token_ms": {str(k): v * 1e3 for k, v in ttft.items()},
        "throughput_tokens_per_s": {str(k): v for k, v in throughput.items()},
        "peak_rss_mb_whole_run": peak_rss_mb(),
    }


def cold_start(
    engine_name: str, artifact: Path, threads: int, prefix_ids: list[int], vocab_size: int, prompt_length: int
) -> dict:
    """Load and produce one token; the parent times this whole process from its start."""
    generate = BY_NAME[engine_name].load(artifact, threads)
    generate(random_prompts(prefix_ids, vocab_size, 1, prompt_length, seed=0), 1)
    return {"peak_rss_mb_first_token": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True)
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--threads", required=True, type=int)
    parser.add_argument("--prefix-ids", required=True, help="the prompt prefix ids as JSON, e.g. [101]")
    parser.add_argument("--vocab-size", required=True, type=int)
    parser.add_argument("--spec", required=True, help="BenchSpec as JSON")
    parser.add_argument("--cold", action="store_true", help="only load and generate one token")
    args = parser.parse_args()
    spec, prefix_ids = BenchSpec(**json.loads(args.spec)), json.loads(args.prefix_ids)
    if args.cold:
        result = cold_start(args.engine, args.artifact, args.threads, prefix_ids, args.vocab_size, spec.decode_prompt)
    else:
        result = measure(args.engine, args.artifact, args.threads, prefix_ids, args.vocab_size, spec)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
