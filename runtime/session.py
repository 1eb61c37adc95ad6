"""One onnxruntime session over a model variant, and the KV cache of its I/O convention.

Both decoders keep the cache in memory that onnxruntime reads in place: nothing is copied
through numpy per token. Rows are gathered (one copy) only when beams reorder or
finished rows leave the batch.

- `PastKeyValuesDecoder` (`past_key_values`): the previous step's `present` OrtValues are
  fed back as `past`; the graph appends the new position, so each step writes a new
  cache [rows, n_head, total, head_dim].
- `KVBufferDecoder` (`kv_buffer`): one preallocated buffer [rows, n_head, capacity, head_dim]
  per layer and kind, bound as both past and present; attention writes the new position
  in place, at each row's own length. Prompts of different lengths are run row by row
  into their slice of the buffer, so rows are never padded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from .manifest import IO_KV_BUFFER, LOGITS_TO_KEEP, SEQLENS_K, TOTAL_SEQUENCE_LENGTH, Architecture


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


class Cache(Protocol):
    """The KV state of the rows being decoded."""

    def select(self, rows: np.ndarray) -> None:
        """Keep (and reorder, or repeat) the given rows: beam reordering, finished rows leaving."""


class Decoder(Protocol):
    """Runs a variant's graph; `*_ids` are token ids, logits are float32."""

    architecture: Architecture

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> tuple[Cache, np.ndarray]:
        """Run the prompts (of any lengths) from an empty cache that will hold `capacity`
        positions per row: (cache, last-position logits [rows, vocab])."""

    def step(self, cache: Cache, tokens: np.ndarray) -> np.ndarray:
        """One new token per row [rows] → logits [rows, vocab]; the cache grows by one."""

    def score(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits of every position [rows, seq, vocab] of equal-length rows [rows, seq]."""


def make_decoder(session: ort.InferenceSession, architecture: Architecture, io: str) -> Decoder:
    """The decoder of a variant's I/O convention (`Variant.io`)."""
    return (KVBufferDecoder if io == IO_KV_BUFFER else PastKeyValuesDecoder)(session, architecture)


def _ortvalue(array: np.ndarray, dtype=np.int64) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array, dtype=dtype))


def _names(a: Architecture, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(a.n_layer) for kind in ("key", "value")]


@dataclass
class PastKeyValues:
    """`past_key_values` cache: [rows, n_head, past_len, head_dim] per layer and kind, and the
    attention mask [rows, past_len] (0 = left padding)."""

    values: list[ort.OrtValue]  # key, value of layer 0, then layer 1, ...
    mask: np.ndarray

    def select(self, rows: np.ndarray) -> None:
        self.values = [_ortvalue(v.numpy()[rows], np.float32) for v in self.values]
        self.mask = self.mask[rows]


class PastKeyValuesDecoder:
    """The ecosystem convention: prompts left-padded into one batch; the graph returns a
    new present per step, fed back as the next past."""

    def __init__(self, session: ort.InferenceSession, architecture: Architecture):
        self.session, self.architecture = session, architecture
        self._past_names = _names(architecture, "past_key_values")
        self._output_names = ["logits"] + _names(architecture, "present")
        self._keep_all, self._keep_last = _ortvalue(0), _ortvalue(1)

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> tuple[PastKeyValues, np.ndarray]:
        """Positions start at 0 at each row's first real token, as transformers computes them."""
        width = max(len(p) for p in prompts)
        ids = np.zeros((len(prompts), width), np.int64)  # padding ids are never attended to
        mask = np.zeros((len(prompts), width), np.int64)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
        positions = np.clip(mask.cumsum(axis=1) - 1, 0, None)
        cache = self._empty(len(prompts))
        return cache, self._run(cache, ids, positions, mask, self._keep_last)[:, -1]

    def step(self, cache: PastKeyValues, tokens: np.ndarray) -> np.ndarray:
        positions = cache.mask.sum(axis=1, keepdims=True)  # [rows, 1]: real tokens so far
        mask = np.concatenate([cache.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        return self._run(cache, tokens[:, None], positions, mask, self._keep_last)[:, -1]

    def score(self, input_ids: np.ndarray) -> np.ndarray:
        mask = np.ones_like(input_ids)
        positions = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
        return self._run(self._empty(len(input_ids)), input_ids, positions, mask, self._keep_all)

    def _empty(self, rows: int) -> PastKeyValues:
        a = self.architecture
        empty = np.zeros((rows, a.n_head, 0, a.head_dim), dtype=np.float32)
        return PastKeyValues([_ortvalue(empty, np.float32) for _ in self._past_names], np.zeros((rows, 0), np.int64))

    def _run(self, cache: PastKeyValues, ids, positions, mask, keep: ort.OrtValue) -> np.ndarray:
        """[rows, seq] ids, positions; mask [rows, past + seq] → logits [rows, kept, vocab]."""
        feeds = dict(zip(self._past_names, cache.values))
        feeds.update(input_ids=_ortvalue(ids), position_ids=_ortvalue(positions), attention_mask=_ortvalue(mask))
        feeds[LOGITS_TO_KEEP] = keep
        outputs = self.session.run_with_ort_values(self._output_names, feeds)
        cache.values, cache.mask = list(outputs[1:]), mask
        return outputs[0].numpy()


@dataclass
class KVBuffer:
    """`kv_buffer` cache: buffers [rows, n_head, capacity, head_dim] per layer and kind that
    onnxruntime writes in place, and each row's length (positions filled)."""

    buffers: list[np.ndarray]  # key, value of layer 0, then layer 1, ...
    lengths: np.ndarray  # [rows] int64
    step_io: "_BoundCall | None" = None  # the one-token step bound to these buffers, made on first use

    def select(self, rows: np.ndarray) -> None:
        used = int(self.lengths.max())
        for k, buffer in enumerate(self.buffers):
            kept = np.empty((len(rows), *buffer.shape[1:]), np.float32)
            kept[:, :, :used] = buffer[rows, :, :used]  # only the filled positions are copied
            self.buffers[k] = kept
        self.lengths = self.lengths[rows]
        self.step_io = None


class _BoundCall:
    """One call shape of a `kv_buffer` graph, bound once: inputs, logits and the KV buffers are
    numpy arrays that onnxruntime reads and writes in place, so a call only writes a few
    numbers into them (no OrtValue or output objects are made per token)."""

    def __init__(self, decoder: "KVBufferDecoder", buffers: list[np.ndarray], rows: int, seq: int, keep_all: bool):
        self.session = decoder.session
        self.input_ids = np.zeros((rows, seq), np.int64)
        self.position_ids = np.zeros((rows, seq), np.int64)
        self.seqlens_k = np.zeros(rows, np.int32)
        self.total_sequence_length = np.zeros((), np.int32)
        self.logits = np.empty((rows, seq if keep_all else 1, decoder.architecture.vocab_size), np.float32)
        self.binding = binding = self.session.io_binding()
        for name in ("input_ids", "position_ids", SEQLENS_K, TOTAL_SEQUENCE_LENGTH):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(getattr(self, name)))
        binding.bind_ortvalue_input(LOGITS_TO_KEEP, decoder.keep_all if keep_all else decoder.keep_last)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        for past_name, present_name, buffer in zip(decoder.past_names, decoder.present_names, buffers):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # shares the numpy memory
            binding.bind_ortvalue_input(past_name, value)
            binding.bind_ortvalue_output(present_name, value)

    def __call__(self, ids: np.ndarray, past: np.ndarray) -> np.ndarray:
        """ids [rows, seq] after `past` [rows] filled positions → logits [rows, kept, vocab] (a copy).
        The rows' real tokens start at position 0, so past is also their first new position."""
        seq = self.input_ids.shape[1]
        self.input_ids[:] = ids
        self.position_ids[:] = past[:, None] + np.arange(seq)
        self.seqlens_k[:] = past + seq - 1
        self.total_sequence_length[...] = past.max() + seq
        self.session.run_with_iobinding(self.binding)
        return self.logits.copy()


class KVBufferDecoder:
    """The in-place convention: past and present bound to one preallocated buffer."""

    def __init__(self, session: ort.InferenceSession, architecture: Architecture):
        self.session, self.architecture = session, architecture
        self.past_names = _names(architecture, "past_key_values")
        self.present_names = _names(architecture, "present")
        self.keep_all, self.keep_last = _ortvalue(0), _ortvalue(1)

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> tuple[KVBuffer, np.ndarray]:
        """Equal-length prompts run as one batch; otherwise each row runs alone into its slice
        of the buffer, so no row is padded."""
        cache = self._empty(len(prompts), capacity)
        if len({len(p) for p in prompts}) == 1:
            call = _BoundCall(self, cache.buffers, len(prompts), len(prompts[0]), keep_all=False)
            logits = call(np.array(prompts, np.int64), cache.lengths)
        else:
            logits = np.concatenate([
                _BoundCall(self, [b[r:r + 1] for b in cache.buffers], 1, len(p), keep_all=False)(np.array([p]), np.zeros(1, np.int64))
                for r, p in enumerate(prompts)
            ])
        cache.lengths = np.array([len(p) for p in prompts], np.int64)
        return cache, logits[:, -1]

    def step(self, cache: KVBuffer, tokens: np.ndarray) -> np.ndarray:
        if cache.step_io is None:
            cache.step_io = _BoundCall(self, cache.buffers, len(tokens), 1, keep_all=False)
        logits = cache.step_io(tokens[:, None], cache.lengths)
        cache.lengths += 1
        return logits[:, -1]

    def score(self, input_ids: np.ndarray) -> np.ndarray:
        rows, seq = input_ids.shape
        cache = self._empty(rows, seq)
        return _BoundCall(self, cache.buffers, rows, seq, keep_all=True)(input_ids, cache.lengths)

    def _empty(self, rows: int, capacity: int) -> KVBuffer:
        a = self.architecture
        if capacity > a.n_positions:
            raise ValueError(f"KV capacity {capacity} exceeds the model's {a.n_positions} positions")
        shape = (rows, a.n_head, capacity, a.head_dim)
        return KVBuffer([np.zeros(shape, np.float32) for _ in self.past_names], np.zeros(rows, np.int64))
