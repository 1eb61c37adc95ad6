"""The settings of the front doors (`serve`, `serve --ray`, `batch`, `batch --ray`) and their defaults, each
defined once, here or in the module named beside it; the command line reads these constants for its flags.

    ModelSettings: what every front door loads (model, precision, threads, prefix cache)
    Capacity: a server's engine sizing and admission limits (one per replica on Ray Serve)
    Settings: how a server admits, sizes and answers requests
    a batch job's rows in flight: `batch_io.DEFAULT_MAX_RUNNING` (why it differs from a server's: below)

Light on purpose (no numpy, onnxruntime or server extra): the command line imports it while
building its parser, before the extras of a command are known to be installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from gpt2_onnx.precisions import DEFAULT_PRECISION

from .openai_api import DEFAULT_CHAT_TEMPLATE

if TYPE_CHECKING:
    from gpt2_onnx.generator import Generator

RAY_THREADS = 1  # cores of a Ray replica or actor without --threads: a replica per core uses a node best
DEFAULT_REPLICAS = 1  # Ray Serve replicas, or Ray Data actors (each one engine)
DEFAULT_HOST = "127.0.0.1"  # loopback: exposing a server to the network is the caller's choice (0.0.0.0)
DEFAULT_PORT = 8000
DEFAULT_GRACE_PERIOD_S = 30.0  # on SIGTERM: seconds running requests may take to finish
# rows a server decodes at once: every step decodes them all, so each more row makes every stream's next token
# wait longer. A batch job has no client waiting token by token, only the job's throughput, which grows with
# the rows of a step until the cores are busy: it runs more (batch_io.DEFAULT_MAX_RUNNING)
DEFAULT_MAX_RUNNING = 8
DEFAULT_MAX_WAITING = 64  # requests queued beyond the running ones; more get 429
DEFAULT_PREFILL_CHUNK = 256  # prompt tokens prefilled per step beside the decoding rows
DEFAULT_MAX_BODY_BYTES = 2**20
API_KEY_ENV = "GPT2_ONNX_API_KEY"  # the server's API key, kept out of the process list
PREFIX_CACHE_HELP = "keys and values of recent prompts kept, in MB, for prompts that begin alike (0: off"
# the runtime's default (`generator.prefix_cache_size`), as a front door's flag help says it
PREFIX_CACHE_RULE = "default: the runtime's, where the precision allows one, none for int4"


@dataclass(frozen=True)
class ModelSettings:
    """What a front door loads, with the same meaning at every one (locally, in a Ray replica or actor)."""

    model: str | None = None  # a model directory or hub id; None: the registry's default model
    precision: str = DEFAULT_PRECISION
    threads: int | None = None  # intra-op threads; None: the cores this process may use (on Ray: RAY_THREADS)
    # None: the runtime's default, on where the precision allows a prefix cache (`generator.prefix_cache_size`);
    # a server's and a batch job's rows often begin alike (a system prompt, a few-shot template), and it is exact
    prefix_cache_mb: float | None = None

    def load(self) -> Generator:
        from gpt2_onnx.generator import Generator

        return Generator.load(
            self.model, precision=self.precision, threads=self.threads, prefix_cache_mb=self.prefix_cache_mb
        )

    def on_ray(self) -> ModelSettings:
        """As a Ray replica or actor loads it: `threads` set (its num_cpus), the model as text (every node reads it)."""
        return replace(self, model=None if self.model is None else str(self.model), threads=self.threads or RAY_THREADS)


@dataclass(frozen=True)
class Capacity:
    """Engine sizing and admission limits."""

    max_running: int = DEFAULT_MAX_RUNNING  # rows decoding at once (the engine's max_rows)
    max_waiting: int = DEFAULT_MAX_WAITING  # requests queued beyond those; more → 429
    kv_cache_mb: float | None = None  # None: every row may hold the full context
    prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK  # prompt tokens per step: long prompts do not stall decoding


@dataclass(frozen=True)
class Settings:
    """How the server admits, sizes and answers requests."""

    model_name: str  # the id /v1/models lists and requests must name
    capacity: Capacity = field(default_factory=Capacity)
    api_key: str | None = None  # None: no key needed
    chat_template: str = DEFAULT_CHAT_TEMPLATE  # per message, {role} and {content}; joined by newlines
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
