"""Speed, side by side: every engine on the same checkpoint, prompts and threads, in one run.

    checkpoint ─prepare (export / convert / quantize, once)─> artifact per engine
    for each round: for each engine: worker process (warm-up, medians) + cold-start processes
                    + weights-only ceilings
    ─> each figure's best round ─> results JSON, markdown table with ratios, PNG plots

Workers run with Python's default bytecode caching, whatever the calling environment
says, so a cold start is what a user's second run sees (a wheel's install compiles it).

The machine is shared: other work only ever adds time, and a slow spell can cover one
engine's whole measurement. Rounds interleave the engines (all of them, then all again),
and each figure is the best of its rounds, so every engine is judged at its unhindered speed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from gpt2_onnx.export.api import package_versions
from gpt2_onnx.export.tokenizer import export_tokenizer
from gpt2_onnx.manifest import Architecture
from gpt2_onnx.precisions import NAMES
from gpt2_onnx.session import default_threads

from .ceiling import ceiling_ms
from .engines import ENGINES, Engine
from .spec import BenchSpec

PACKAGES = (
    "gpt2-onnx",
    "onnxruntime",
    "numpy",
    "torch",
    "transformers",
    "optimum-onnx",
    "optimum",
    "ctranslate2",
    "tokenizers",
)


def run_speed(
    checkpoint: Path,
    work: Path,
    spec: BenchSpec,
    threads: int | None = None,
    engines: list[str] | None = None,
    log=print,
) -> dict:
    """Measure every engine (or the named ones); returns the results document."""
    threads = threads or default_threads()
    config = json.loads((checkpoint / "config.json").read_text())
    arch = Architecture.from_config(config)
    # every engine's prompts start as gpt2-onnx's export of this checkpoint starts them ([CLS] for uer)
    prefix_ids = export_tokenizer(checkpoint, config, arch.vocab_size).conventions.prompt_prefix_ids
    results, skipped, prepared, ceilings = {}, {}, {}, {}
    for round_ in range(spec.rounds):
        for engine in ENGINES:
            if (engines and engine.name not in engines) or engine.name in skipped:
                continue
            if not _importable(engine.requires):
                skipped[engine.name] = f"{engine.requires} is not installed (pip install 'gpt2-onnx[bench]')"
                log(f"skip {engine.name}: {skipped[engine.name]}")
                continue
            log(f"measuring {engine.name} (round {round_ + 1} of {spec.rounds})")
            try:
                if engine.prepare not in prepared:  # gpt2-onnx's variants share one export
                    prepared[engine.prepare] = engine.prepare(checkpoint, work)
                measured = _measure_engine(engine, prepared[engine.prepare], threads, prefix_ids, arch.vocab_size, spec)
            except Exception as e:  # a peer that fails is reported as such; our own failures are bugs
                if engine.name.startswith("gpt2-onnx"):
                    raise
                detail = (
                    e.stderr.strip().splitlines()[-1]
                    if isinstance(e, subprocess.CalledProcessError) and e.stderr
                    else repr(e)
                )
                skipped[engine.name] = f"failed: {detail}"
                results.pop(engine.name, None)
                log(f"skip {engine.name}: {skipped[engine.name]}")
                continue
            results[engine.name] = best_of(results[engine.name], measured) if engine.name in results else measured
        for p in NAMES:
            ceilings[p] = min(ceilings.get(p, float("inf")), ceiling_ms(arch, p, threads))
    for name, r in results.items():
        precision = next(e.precision for e in ENGINES if e.name == name)
        r["efficiency"] = ceilings[precision] / r["decode_ms_per_token"]
    return {
        "machine": machine(threads),
        "versions": package_versions(PACKAGES),
        "checkpoint": str(checkpoint),
        "architecture": asdict(arch),
        "spec": asdict(spec),
        "weights_only_ceiling_ms": ceilings,
        "weights_only_ceiling_tokens_per_s": {p: 1e3 / ms for p, ms in ceilings.items()},
        "engines": results,
        "skipped": skipped,
    }


def best_of(a: dict, b: dict, higher_is_better: bool = False) -> dict:
    """Figure by figure, the better of two rounds: the higher rate for `*tokens_per_s` (and
    the figures nested under such a key), the lower time or memory for everything else."""
    best = {}
    for key, value in a.items():
        higher = higher_is_better or "tokens_per_s" in key
        best[key] = (
            best_of(value, b[key], higher) if isinstance(value, dict) else (max if higher else min)(value, b[key])
        )
    return best


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _worker(
    engine: Engine,
    artifact: Path,
    threads: int,
    prefix_ids: Sequence[int],
    vocab_size: int,
    spec: BenchSpec,
    cold: bool,
) -> tuple[dict, float]:
    cmd = [
        sys.executable,
        "-m",
        "gpt2_onnx.benchmarks.worker",
        "--engine",
        engine.name,
        "--artifact",
        str(artifact),
        "--threads",
        str(threads),
        "--prefix-ids",
        json.dumps(list(prefix_ids)),
        "--vocab-size",
        str(vocab_size),
        "--spec",
        json.dumps(asdict(spec)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    # Python's default: modules are compiled once and their bytecode reused. A sandbox that sets
    # PYTHONDONTWRITEBYTECODE would make every cold start compile gpt2-onnx (installed editable,
    # so not compiled by pip as the peers' wheels are) and the benchmark's own worker modules.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd + (["--cold"] if cold else []), capture_output=True, text=True, env=env, check=True)
    elapsed = time.perf_counter() - start
    return json.loads(proc.stdout.strip().splitlines()[-1]), elapsed


def _measure_engine(
    engine: Engine, artifact: Path, threads: int, prefix_ids: Sequence[int], vocab_size: int, spec: BenchSpec
) -> dict:
    result, _ = _worker(engine, artifact, threads, prefix_ids, vocab_size, spec, cold=False)
    colds = [_worker(engine, artifact, threads, prefix_ids, vocab_size, spec, cold=True) for _ in range(spec.cold_reps)]
    result["cold_start_s"] = sorted(t for _, t in colds)[len(colds) // 2]
    result["peak_rss_mb_first_token"] = sorted(r["peak_rss_mb_first_token"] for r, _ in colds)[len(colds) // 2]
    result["size_mb"] = sum(p.stat().st_size for p in engine.files(artifact)) / 1e6
    return result


def machine(threads: int) -> dict:
    """CPU model and the instruction set the int8 kernels can use (their speed depends on it)."""
    cpu, flags = platform.processor(), set()
    try:
        info = open("/proc/cpuinfo").read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        flags = set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "isa": instruction_set(flags),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def instruction_set(flags: set[str]) -> str:
    """The best x86 matrix extension present: AMX, AVX-512 VNNI, AVX-VNNI, AVX2 (or unknown)."""
    for flag, name in (
        ("amx_int8", "AMX"),
        ("avx512_vnni", "AVX-512 VNNI"),
        ("avx_vnni", "AVX-VNNI"),
        ("avx2", "AVX2"),
    ):
        if flag in flags:
            return name
    return "unknown"
