"""Serving under load (`bench --only serve`): streaming clients against three HTTP servers.

    checkpoint ─export INT8─> model dir ─> offline reference in this process (Generator:
        batch-1 step time, batch throughput, a long prompt's prefill)
    for each server, in a process of its own on a free 127.0.0.1 port:
        (a) gpt2-onnx serve, continuous batching   (b) the same, one request at a time
        (c) optimum + FastAPI as a user would write it (benchmarks/optimum_server.py)
        warm-up wave ─> for each level N: N clients stream /v1/completions back to back
        ─> per request: time to first token, gaps between chunks; per level: tokens/s
    (a) with itl_level clients, without and with a long prompt arriving mid-way ─> p99 gaps
    ─> results document; markdown with the issue's targets; PNG

Timing is on the client: a chunk's arrival time is when its line was read, as a user sees it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from gpt2_onnx import Generator

from .spec import ServeSpec

OURS_BATCHING, OURS_SERIAL, OPTIMUM = (
    "gpt2-onnx serve (continuous batching)",
    "gpt2-onnx serve (one at a time)",
    "optimum + FastAPI",
)


# --- prompts and the offline reference ----------------------------------------------------------


def cjk_characters(gen: Generator) -> list[str]:
    """The vocabulary's single CJK characters (one id each in a BERT-Chinese tokenizer)."""
    return [
        t
        for t in (gen.codec.decode([i]) for i in range(gen.manifest.architecture.vocab_size))
        if len(t) == 1 and "\u4e00" <= t <= "\u9fff"
    ]


def prompt_texts(gen: Generator, chars: list[str], count: int, tokens: int, seed: int) -> list[str]:
    """`count` different texts of exactly `tokens` ids each (prefix included), drawn from `chars`."""
    prefix = len(gen.manifest.conventions.prompt_prefix_ids)
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(chars, tokens - prefix)) for _ in range(count)]
    for text in texts:
        if (n := len(gen.encode(text))) != tokens:
            raise ValueError(
                f"a {tokens}-token prompt encodes to {n} ids; the serve benchmark "
                "needs a BERT-Chinese (uer) tokenizer, where a CJK character is one id"
            )
    return texts


def offline(gen: Generator, spec: ServeSpec, prompts: list[str], long_prompt: str) -> dict:
    """Generator alone, no server: the batch-1 step time, batch-`target_level` tokens/s (whole
    call), and one prefill chunk's time (a long prompt's prefill / its number of chunks)."""
    greedy = dict(do_sample=False, stop_token_ids=[])
    ids = [gen.encode(p) for p in prompts[: spec.target_level]]
    gen.generate_ids(ids, max_new_tokens=spec.max_tokens, **greedy)  # warm-up, the batch's shapes
    steps, batch, prefill = [], [], []
    for _ in range(spec.offline_reps):
        steps.append(
            1e3 / gen.generate_ids(ids[0], max_new_tokens=spec.max_tokens, **greedy).timings.decode_tokens_per_s
        )
        start = time.perf_counter()
        gen.generate_ids(ids, max_new_tokens=spec.max_tokens, **greedy)
        batch.append(len(ids) * spec.max_tokens / (time.perf_counter() - start))
        prefill.append(
            gen.generate_ids(gen.encode(long_prompt), max_new_tokens=1, **greedy).timings.time_to_first_token_s * 1e3
        )
    chunks = math.ceil(spec.long_prompt_tokens / spec.prefill_chunk)
    return {
        "step_ms": float(np.median(steps)),
        "batch": len(ids),
        "batch_tokens_per_s": float(np.median(batch)),
        "long_prefill_ms": float(np.median(prefill)),
        "prefill_chunk_ms": float(np.median(prefill)) / chunks,
    }


# --- servers, each in its own process ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(command: list[str], port: int, log: Path, timeout_s: float) -> Iterator[str]:
    """Start a server process, wait for GET /health to say 200, yield its URL; SIGTERM at the end."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text().strip().splitlines()[-3:]
                raise RuntimeError(f"server did not come up ({' '.join(command[:4])} …): {' | '.join(tail)}")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the load client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """One streamed request as its client saw it (perf_counter seconds)."""

    start: float
    arrivals: tuple[float, ...]  # every chunk that carried text
    tokens: int  # the usage chunk's completion tokens
    error: str | None = None


async def stream_one(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, on_chunk: Callable[[], None] = lambda: None
) -> Stream:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_new_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, arrivals, tokens = time.perf_counter(), [], 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return Stream(start, (), 0, f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue  # blank separators and `data: [DONE]`
                chunk = json.loads(line[len("data: ") :])
                if any(c.get("text") for c in chunk["choices"]):
                    arrivals.append(time.perf_counter())
                    on_chunk()
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    except httpx.HTTPError as e:
        return Stream(start, tuple(arrivals), tokens, f"{type(e).__name__}: {e}")
    return Stream(start, tuple(arrivals), tokens)


def _client(url: str, streams: int, timeout_s: float) -> httpx.AsyncClient:
    """An HTTP client with a connection for each of `streams` concurrent streams (and one spare)."""
    return httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=httpx.Limits(max_connections=streams + 1))


async def load(
    url: str, model: str, prompts: list[str], clients: int, max_tokens: int, timeout_s: float
) -> tuple[list[Stream], float]:
    """`clients` concurrent clients, each streaming its share of `prompts` back to back; the
    streams and the wall time from the first request to the last chunk."""
    async with _client(url, clients, timeout_s) as client:

        async def one_client(share: list[str]) -> list[Stream]:
            return [await stream_one(client, model, p, max_tokens) for p in share]

        start = time.perf_counter()
        shares = await asyncio.wait_for(
            asyncio.gather(*(one_client(prompts[i::clients]) for i in range(clients))), timeout_s
        )
        return [s for share in shares for s in share], time.perf_counter() - start


async def with_long_prompt(
    url: str, model: str, prompts: list[str], long_prompt: str, spec: ServeSpec
) -> tuple[list[Stream], Stream]:
    """`itl_level` streams; once each has a few chunks, the long prompt arrives beside them."""
    clients, arrived = spec.itl_level, asyncio.Event()
    counted = itertools.count(1)
    threshold = clients * max(1, spec.max_tokens // 8)  # mid-stream: the streams have started and have far to go

    def on_chunk() -> None:
        if next(counted) >= threshold:
            arrived.set()

    async with _client(url, clients + 1, spec.timeout_s) as client:  # the streams and the long prompt

        async def long_request() -> Stream:
            await arrived.wait()
            return await stream_one(client, model, long_prompt, spec.long_max_tokens)

        *streams, long = await asyncio.wait_for(
            asyncio.gather(
                *(stream_one(client, model, p, spec.max_tokens, on_chunk) for p in prompts[:clients]), long_request()
            ),
            spec.timeout_s,
        )
    return streams, long


# --- figures --------------------------------------------------------------------------------------


def _gaps_ms(streams: list[Stream]) -> np.ndarray:
    return np.concatenate([np.diff(s.arrivals) for s in streams] + [np.zeros(0)]) * 1e3


def level_figures(streams: list[Stream], wall_s: float) -> dict:
    """Aggregate tokens/s, p50/p99 time to first token and inter-token gap (ms), failures."""
    ok = [s for s in streams if s.error is None and s.arrivals]
    ttft, gaps = np.array([(s.arrivals[0] - s.start) * 1e3 for s in ok]), _gaps_ms(ok)

    def pct(a, q):
        return float(np.percentile(a, q)) if len(a) else None

    tokens = sum(s.tokens for s in ok)
    return {
        "requests": len(streams),
        "errors": [s.error or "no text" for s in streams if s.error or not s.arrivals],
        "tokens_per_s": tokens / wall_s,
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "itl_p50_ms": pct(gaps, 50),
        "itl_p99_ms": pct(gaps, 99),
        "chunks_per_token": sum(len(s.arrivals) for s in ok) / tokens if tokens else None,
    }


# --- the run -------------------------------------------------------------------------------------


def run_serve(checkpoint: Path, work: Path, spec: ServeSpec, threads: int, log=print) -> dict:
    """Every server at every level, the long-prompt run, the offline reference: the results document."""
    from gpt2_onnx.export import export_model

    from .engines import _optimum_prepare
    from .speed import _importable

    model_dir = export_model(str(checkpoint), work / "serve-gpt2-onnx", quantize=("int8",), force=True, check=False)
    gen = Generator.load(model_dir, precision="int8", threads=threads)
    chars = cjk_characters(gen)
    per_level = [
        prompt_texts(gen, chars, n * spec.requests_per_client, spec.prompt_tokens, seed=n) for n in spec.levels
    ]
    warmup = prompt_texts(gen, chars, max(spec.levels), spec.prompt_tokens, seed=0)
    beside_long = prompt_texts(
        gen, chars, 2 * spec.itl_level, spec.prompt_tokens, seed=2000
    )  # unseen: no prefix-cache hits
    long_prompt = prompt_texts(gen, chars, 1, spec.long_prompt_tokens, seed=900)[0]
    log("measuring the offline reference (Generator)")
    reference = offline(
        gen, spec, prompt_texts(gen, chars, spec.target_level, spec.prompt_tokens, seed=1000), long_prompt
    )
    prefix_ids = json.dumps(list(gen.manifest.conventions.prompt_prefix_ids))
    del gen  # its sessions and threads are not needed beside the servers

    ours = [
        sys.executable,
        "-m",
        "gpt2_onnx.apps.cli",
        "serve",
        "--model",
        str(model_dir),
        "--precision",
        "int8",
        "--threads",
        str(threads),
        "--max-waiting",
        "64",
        "--prefill-chunk",
        str(spec.prefill_chunk),
    ]
    servers = {
        OURS_BATCHING: lambda port: ours + ["--max-running", "64", "--port", str(port)],
        OURS_SERIAL: lambda port: ours + ["--max-running", "1", "--port", str(port)],
    }
    skipped = {}
    if _importable("optimum.onnxruntime"):
        artifact = _optimum_prepare("int8")(checkpoint, work)
        servers[OPTIMUM] = lambda port: [
            sys.executable,
            "-m",
            "gpt2_onnx.benchmarks.optimum_server",
            "--artifact",
            str(artifact),
            "--tokenizer",
            str(checkpoint),
            "--prefix-ids",
            prefix_ids,
            "--threads",
            str(threads),
            "--port",
            str(port),
        ]
    else:
        skipped[OPTIMUM] = "optimum.onnxruntime is not installed (pip install 'gpt2-onnx[bench]')"

    results, long_prompt_run = {}, None
    for letter, (name, command) in zip("abc", servers.items()):
        log(f"measuring {name}")
        port = free_port()
        try:
            with running(command(port), port, work / f"serve-{letter}.log", spec.timeout_s) as url:
                asyncio.run(load(url, str(model_dir), warmup, max(spec.levels), spec.warmup_tokens, spec.timeout_s))
                results[name] = {
                    str(n): level_figures(
                        *asyncio.run(load(url, str(model_dir), prompts, n, spec.max_tokens, spec.timeout_s))
                    )
                    for n, prompts in zip(spec.levels, per_level)
                }
                if name == OURS_BATCHING:
                    long_prompt_run = _long_prompt_run(url, str(model_dir), beside_long, long_prompt, spec)
        except Exception as e:  # a peer that fails is reported as such; our own failures are bugs
            if name != OPTIMUM:
                raise
            skipped[name] = f"failed: {e!r}"
            log(f"skip {name}: {skipped[name]}")
    return {
        "spec": asdict(spec),
        "checkpoint": str(checkpoint),
        "threads": threads,
        "offline": reference,
        "servers": results,
        "long_prompt": long_prompt_run,
        "skipped": skipped,
    }


def _long_prompt_run(url: str, model: str, prompts: list[str], long_prompt: str, spec: ServeSpec) -> dict:
    """The running streams' p99 gap without, then with, the long prompt arriving among them."""
    quiet, wall = asyncio.run(
        load(url, model, prompts[: spec.itl_level], spec.itl_level, spec.max_tokens, spec.timeout_s)
    )
    loaded, long = asyncio.run(with_long_prompt(url, model, prompts[spec.itl_level :], long_prompt, spec))
    without, with_ = level_figures(quiet, wall)["itl_p99_ms"], float(np.percentile(_gaps_ms(loaded), 99))
    return {
        "clients": spec.itl_level,
        "itl_p99_without_ms": without,
        "itl_p99_with_ms": with_,
        "rise_ms": with_ - without,
        "long_prompt_ttft_ms": (long.arrivals[0] - long.start) * 1e3 if long.arrivals else None,
        "long_prompt_error": long.error,
    }
