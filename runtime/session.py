"""One onnxruntime session over a model variant, and its KV cache.

The cache lives in OrtValues that onnxruntime allocated as the previous step's
`present.{i}.key|value` outputs; they are fed back as the next step's
`past_key_values.{i}.*` as they are, without a copy through numpy. The graph itself appends the
new position (Concat), so Python never re-concatenates or copies the cache per token.
Rows are gathered (one copy) only when beams reorder or finished rows leave the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .manifest import LOGITS_TO_KEEP, Architecture


def default_threads() -> int:
    """Physical cores are what matmul kernels scale with; `os.cpu_count` counts hyper-threads
    on some machines, so use the scheduler's affinity when the OS reports it."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def create_session(model: Path, threads: int | None) -> ort.InferenceSession:
    """onnxruntime reads the file itself: no second copy of the weights in Python memory."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


@dataclass
class KVCache:
    """Past keys and values of every layer: [batch, n_head, past_len, head_dim] each."""

    values: list[ort.OrtValue]  # key, value of layer 0, then layer 1, ...

    def select(self, rows: np.ndarray) -> None:
        """Keep (and reorder, or repeat) the given rows: beam reordering, finished rows leaving."""
        self.values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[rows])) for v in self.values]


class OnnxDecoder:
    """Runs the graph: `[batch, seq]` new ids in, `[batch, vocab]` last-position logits out."""

    def __init__(self, session: ort.InferenceSession, architecture: Architecture):
        self.session = session
        self.architecture = architecture
        a = architecture
        self._past_names = [f"past_key_values.{i}.{k}" for i in range(a.n_layer) for k in ("key", "value")]
        self._present_names = [f"present.{i}.{k}" for i in range(a.n_layer) for k in ("key", "value")]
        self._output_names = ["logits"] + self._present_names
        self._all, self._last = (ort.OrtValue.ortvalue_from_numpy(np.array(n, np.int64)) for n in (0, 1))

    def empty_cache(self, batch: int) -> KVCache:
        a = self.architecture
        empty = np.zeros((batch, a.n_head, 0, a.head_dim), dtype=np.float32)
        return KVCache([ort.OrtValue.ortvalue_from_numpy(empty) for _ in self._past_names])

    def forward(
        self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache,
        all_positions: bool = False,
    ) -> np.ndarray:
        """input_ids, position_ids [batch, seq]; attention_mask [batch, past_len + seq].
        Returns logits of the last position [batch, vocab] (every position [batch, seq, vocab]
        with `all_positions`); the cache grows by seq."""
        feeds = dict(zip(self._past_names, cache.values))
        feeds["input_ids"] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        feeds["position_ids"] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64))
        feeds["attention_mask"] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64))
        feeds[LOGITS_TO_KEEP] = self._all if all_positions else self._last
        outputs = self.session.run_with_ort_values(self._output_names, feeds)
        cache.values = list(outputs[1:])
        logits = outputs[0].numpy()  # [batch, seq, vocab], or [batch, 1, vocab]
        return logits if all_positions else logits[:, -1, :]
