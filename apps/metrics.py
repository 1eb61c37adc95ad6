"""The server's Prometheus metrics, in a registry of their own (one per app).

Token counters count what the runtime counts: prompt tokens with the family's prefix, new
tokens with a final stop token. Latencies are observed on the engine thread when events
arrive: time to first token from submission, inter-token latency between one sequence's
consecutive token events.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gpt2_onnx.engine import Stats

PREFIX = "gpt2_onnx_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counters and histograms the request path updates; gauges read from the engine's stats."""

    def __init__(self, stats: Callable[[], Stats | None]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens submitted (the family's prefix included)", registry=r
        )
        self.generated_tokens = Counter(
            PREFIX + "generated_tokens", "New tokens generated (final stop tokens included)", registry=r
        )
        self.requests = Counter(PREFIX + "requests", "Engine requests submitted (one per prompt)", registry=r)
        self.rejected = Counter(
            PREFIX + "requests_rejected", "API calls refused with 429 (running and waiting limits full)", registry=r
        )
        self.cancelled = Counter(
            PREFIX + "requests_cancelled", "Engine requests cancelled (the client went away)", registry=r
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds", "Submission to first new token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Between consecutive tokens of a sequence",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._stats = stats
        self._snapshot: Stats | None = None  # what `text` read, for the gauges
        gauges = {
            "requests_running": (
                "Requests prefilling or decoding",
                lambda s: s.decoding_requests + s.prefilling_requests,
            ),
            "requests_waiting": ("Requests submitted, not yet admitted", lambda s: s.waiting_requests),
            "batch_rows": ("Rows decoding", lambda s: s.decoding_rows),
            "batch_occupancy": ("Decoding rows / max rows", lambda s: s.decoding_rows / s.max_rows),
            "kv_reserved_positions": ("KV positions reserved by admitted requests", lambda s: s.reserved_positions),
            "kv_budget_positions": ("KV positions the budget holds", lambda s: s.budget_positions),
            "prefix_cache_hits": ("Prompts that began with cached blocks", lambda s: s.prefix_cache_hits),
            "prefix_cache_misses": ("Prompts that found no cached block", lambda s: s.prefix_cache_misses),
            "prefix_cache_bytes": ("Bytes of keys and values the prefix cache holds", lambda s: s.prefix_cache_bytes),
        }
        for name, (text, read) in gauges.items():
            Gauge(PREFIX + name, text, registry=r).set_function(self._reader(read))

    def _reader(self, read: Callable[[Stats], float]) -> Callable[[], float]:
        def value() -> float:
            stats = self._snapshot
            return float(read(stats)) if stats is not None else 0.0

        return value

    def text(self) -> bytes:
        """The exposition text for GET /metrics: every gauge from one snapshot the engine published."""
        self._snapshot = self._stats()
        return generate_latest(self.registry)
