"""One onnxruntime session over a variant's `kv_buffer` graph, and its KV cache.

The cache is one buffer [rows, n_head, capacity, head_dim] per layer and kind, bound as
both past and present: attention writes each new position in place, at each row's own
length, so no step copies the cache, and rows of different lengths are never padded.
The buffers live in anonymous memory that the OS commits page by page as positions are
written: a row costs what its tokens cost whatever the capacity, and a row that leaves
gives its pages back. Beam reordering copies only rows whose parent is another row, and
only the positions that parent has filled.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .graph_io import (
    INPUT_IDS,
    LOGITS,
    LOGITS_TO_KEEP,
    POSITION_IDS,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    cache_names,
    past_name,
    present_name,
)
from .graph_shapes import check_graph_architecture
from .manifest import Architecture


def default_threads() -> int:
    """Physical cores are what matmul kernels scale with; `os.cpu_count` counts hyper-threads
    on some machines, so use the scheduler's affinity when the OS reports it."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None) -> ort.SessionOptions:
    """One thread pool of `threads` (default: the cores this process may use), sequential nodes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def create_session(model, threads: int | None, profile_prefix: str | None = None) -> ort.InferenceSession:
    """`model`: a path (onnxruntime reads the file itself: no second copy of the weights in
    Python memory) or serialized bytes. `profile_prefix`: onnxruntime's profiler writes every
    node's time to a JSON trace there (`end_profiling` names the file; the benchmarks read it)."""
    source = model if isinstance(model, bytes) else str(model)
    options = session_options(threads)
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _anonymous_array(shape: tuple[int, ...]) -> tuple[np.ndarray, mmap.mmap]:
    """float32 zeros in memory the OS commits only where written, and can take back
    (private: shared anonymous memory keeps pages that MADV_DONTNEED unmaps)."""
    size = max(1, int(np.prod(shape)) * 4)
    private = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}
    memory = mmap.mmap(-1, size, **private)
    return np.frombuffer(memory, np.float32).reshape(shape), memory


@dataclass
class KVBuffer:
    """The cache of `rows` rows (up to `max_rows`): buffers [rows, n_head, capacity, head_dim]
    per layer and kind, and each row's length (positions filled). Calls bind at least
    `min_rows` rows: scratch rows past the real ones fill a call up (see `Precision.min_call_rows`)."""

    full: list[np.ndarray]  # [max_rows + min_rows - 1, n_head, capacity, head_dim] each
    memory: list[mmap.mmap]
    lengths: np.ndarray  # [rows] int64
    min_rows: int = 1
    decode_calls: dict = field(default_factory=dict)  # (rows, seq, kept) → a binding to the first rows
    buffers: list[np.ndarray] = field(init=False)  # views of the rows a call binds

    def __post_init__(self):
        self._bind()

    def _bind(self) -> None:
        self.buffers = [b[: max(len(self.lengths), self.min_rows)] for b in self.full]

    @property
    def max_rows(self) -> int:
        return self.full[0].shape[0] - self.min_rows + 1

    def append(self, count: int) -> None:
        """`count` empty rows after the others."""
        if len(self.lengths) + count > self.max_rows:
            raise ValueError(f"{len(self.lengths) + count} rows do not fit a cache made for {self.max_rows}")
        self.lengths = np.concatenate([self.lengths, np.zeros(count, np.int64)])
        self._bind()

    def select(self, rows: np.ndarray) -> None:
        """Keep, reorder or repeat rows (beams, rows leaving), in place: a row whose source is
        another row copies that row's filled positions only; rows past the new count give
        their pages back to the OS."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == len(self.lengths) and (rows == np.arange(len(rows))).all():
            return  # every row stays where it is: the common step
        if len(rows) > self.max_rows:
            raise ValueError(f"{len(rows)} rows do not fit a cache made for {self.max_rows}")
        moves = [(dst, int(src)) for dst, src in enumerate(rows) if dst != src]  # run in this order
        overwritten = {dst for dst, _ in moves}
        # a source overwritten before it is read (its own move comes first: src < dst) is staged
        # first; rows shifting down (src > dst, rows leaving) are read before they are written
        staged = {
            src: [b[src, :, : self.lengths[src]].copy() for b in self.full]
            for dst, src in moves
            if src in overwritten and src < dst
        }
        old_lengths = np.zeros(len(self.full[0]), np.int64)
        old_lengths[: len(self.lengths)] = self.lengths
        for dst, src in moves:
            n = self.lengths[src]
            for k, b in enumerate(self.full):
                b[dst, :, :n] = staged[src][k] if src in staged else b[src, :, :n]
            if old_lengths[dst] > n:  # a longer row lived here: its tail pages go back
                for head in range(self.full[0].shape[1]):
                    self._release_range((dst, head, n), (dst, head, old_lengths[dst]))
        old = len(self.lengths)
        self.lengths = self.lengths[rows]
        if len(rows) < old:
            self._release_range((len(rows), 0, 0), (old, 0, 0))
        if len(rows) != old:
            self._bind()

    def read_positions(self, row: int, start: int, end: int) -> np.ndarray:
        """A copy of positions [start, end) of a row: [layers × kinds, n_head, end - start, head_dim]."""
        return np.stack([b[row, :, start:end] for b in self.full])

    def write_positions(self, row: int, start: int, values: np.ndarray) -> None:
        """Put `read_positions` output at positions [start, start + n) of a row."""
        for b, v in zip(self.full, values):
            b[row, :, start : start + v.shape[1]] = v

    def replace_row(self, row: int, values: np.ndarray, held: int) -> None:
        """The row's first positions become `values` [layers × kinds, n_head, n, head_dim]; the
        pages of the `held` positions it wrote past them go back (its length is the caller's)."""
        n = values.shape[2]
        self.write_positions(row, 0, values)
        for head in range(self.full[0].shape[1]):
            self._release_range((row, head, n), (row, head, held))

    def _release_range(self, first: tuple[int, int, int], end: tuple[int, int, int]) -> None:
        """Give back the whole pages between (row, head, position) `first` and `end`."""
        _, heads, capacity, head_dim = self.full[0].shape

        def offset(row: int, head: int, position: int) -> int:  # bytes into a buffer (float32)
            return ((row * heads + head) * capacity + position) * head_dim * 4

        start = -(-offset(*first) // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = offset(*end) // mmap.PAGESIZE * mmap.PAGESIZE
        for memory in self.memory:
            if stop > start and hasattr(memory, "madvise"):  # Linux, macOS; elsewhere the pages stay committed
                memory.madvise(mmap.MADV_DONTNEED, start, stop - start)


def bind_in_place(
    session: ort.InferenceSession,
    decoder: Decoder,
    inputs: dict[str, np.ndarray],
    logits: np.ndarray,
    buffers: list[np.ndarray],
) -> ort.IOBinding:
    """A binding of `session` that reads `inputs` and writes `logits` in their numpy memory,
    with each KV buffer bound as both its past and its present (written in place)."""
    binding = session.io_binding()
    for name, array in inputs.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
    binding.bind_ortvalue_output(LOGITS, ort.OrtValue.ortvalue_from_numpy(logits))
    for past, present, buffer in zip(decoder.past_names, decoder.present_names, buffers):
        value = ort.OrtValue.ortvalue_from_numpy(buffer)  # shares the numpy memory
        binding.bind_ortvalue_input(past, value)
        binding.bind_ortvalue_output(present, value)
    return binding


class _BoundCall:
    """One call shape of the graph, bound once to `k` rows of a cache (and the scratch rows
    that fill a call up to `min_rows`): inputs, logits and the KV buffers are numpy arrays
    that onnxruntime reads and writes in place, so a call only writes a few numbers into
    them (no OrtValue or output objects are made per token)."""

    def __init__(self, decoder: Decoder, buffers: list[np.ndarray], seq: int, keep: int):
        rows = buffers[0].shape[0]
        self.session = decoder.session
        self.input_ids = np.zeros((rows, seq), np.int64)
        self.position_ids = np.zeros((rows, seq), np.int64)
        self.seqlens_k = np.zeros(rows, np.int32)
        self.total_sequence_length = np.zeros((), np.int32)
        self.keep = np.array(keep, np.int64)
        self.logits = np.empty((rows, keep or seq, decoder.architecture.vocab_size), np.float32)
        inputs = {
            INPUT_IDS: self.input_ids,
            POSITION_IDS: self.position_ids,
            SEQLENS_K: self.seqlens_k,
            TOTAL_SEQUENCE_LENGTH: self.total_sequence_length,
            LOGITS_TO_KEEP: self.keep,
        }
        self.binding = bind_in_place(self.session, decoder, inputs, self.logits, buffers)

    def __call__(self, ids: np.ndarray, past: np.ndarray) -> np.ndarray:
        """ids [rows, seq] after `past` [rows] filled positions → logits [rows, kept, vocab] (a
        copy). The rows' real tokens start at position 0, so past is also their first new
        position; a scratch row's past is its own length, so what it writes lies beyond
        anything it holds."""
        seq = ids.shape[1]
        self.input_ids[:] = ids
        self.position_ids[:] = past[:, None] + np.arange(seq)
        self.seqlens_k[:] = past + seq - 1
        self.total_sequence_length[...] = past.max() + seq
        self.session.run_with_iobinding(self.binding)
        return self.logits.copy()


# onnxruntime's GroupQueryAttention: "batch_size must be 1 when sequence_length > 1 and past
# context is given"
CONTINUING_ROWS = 1  # rows a call takes when they continue a past with several tokens each


class Decoder:
    """Runs a variant's `kv_buffer` graph; `*_ids` are token ids, logits float32. A call of one
    token per row binds at least `min_rows` rows (`Precision.min_call_rows`); a call of several
    tokens after a past takes at most `CONTINUING_ROWS` rows."""

    def __init__(self, session: ort.InferenceSession, architecture: Architecture, min_rows: int = 1):
        self.session, self.architecture, self.min_rows = session, architecture, min_rows
        self.past_names = cache_names(architecture.n_layer, past_name)
        self.present_names = cache_names(architecture.n_layer, present_name)

    def run(self, cache: KVBuffer, first: int, ids: np.ndarray, every_position: bool = False) -> np.ndarray:
        """Rows [first, first + k) of the cache each take `seq` more tokens, ids [k, seq], after
        their `cache.lengths` filled positions → logits of the last position [k, vocab] (or of
        every new one, [k, seq, vocab], to verify proposed tokens). The lengths stay as they are:
        whoever drives the cache moves them (an engine's commit; `prefill`, `step`). Decode calls
        (first 0, one token or every position: decode steps and verification passes) keep
        their binding while the rows' count holds; a prompt's call binds afresh (its length
        varies, and a binding kept per length would live as long as the cache)."""
        k, seq = ids.shape
        width = max(k, self.min_rows) if seq == 1 else k  # several tokens are several rows to the kernels already
        lengths = np.zeros(width, np.int64)
        known = cache.lengths[first : first + width]
        lengths[: len(known)] = known
        keep = seq if every_position else 1
        assert seq == 1 or k <= CONTINUING_ROWS or not lengths.any(), "several tokens after a past: too many rows"
        if first == 0 and (seq == 1 or every_position):
            call = cache.decode_calls.get((width, seq, keep))
            if call is None:
                call = cache.decode_calls[width, seq, keep] = _BoundCall(
                    self, [b[:width] for b in cache.full], seq, keep
                )
        else:
            call = _BoundCall(self, [b[first : first + width] for b in cache.full], seq, keep)
        padded = np.zeros((width, seq), np.int64)
        padded[:k] = ids
        logits = call(padded, lengths)[:k]
        return logits if every_position else logits[:, -1]

    def prefill(
        self, prompts: Sequence[Sequence[int]], capacity: int, max_rows: int | None = None
    ) -> tuple[KVBuffer, np.ndarray]:
        """Run the prompts (of any lengths) into an empty cache of `capacity` positions per row
        that can grow to `max_rows` rows: (cache, last-position logits [rows, vocab]).
        Equal-length prompts run as one batch; otherwise each row runs alone into its slice."""
        cache = self.empty(len(prompts), capacity, max_rows)
        if len({len(p) for p in prompts}) == 1:
            logits = self.run(cache, 0, np.array(prompts, np.int64))
        else:
            logits = np.concatenate([self.run(cache, r, np.array([p], np.int64)) for r, p in enumerate(prompts)])
        cache.lengths[:] = [len(p) for p in prompts]
        return cache, logits

    def step(self, cache: KVBuffer, tokens: np.ndarray) -> np.ndarray:
        """One new token for each of the first len(tokens) rows → logits [rows, vocab]; their lengths grow by one."""
        logits = self.run(cache, 0, tokens[:, None])
        cache.lengths[: len(tokens)] += 1
        return logits

    def score(self, input_ids: np.ndarray) -> np.ndarray:
        """Logits of every position [rows, seq, vocab] of equal-length rows [rows, seq]."""
        rows, seq = input_ids.shape
        cache = self.empty(rows, seq)
        call = _BoundCall(self, cache.buffers, seq, 0)
        padded = np.zeros((call.input_ids.shape[0], seq), np.int64)
        padded[:rows] = input_ids
        return call(padded, np.zeros(len(padded), np.int64))[:rows]

    def empty(self, rows: int, capacity: int, max_rows: int | None = None) -> KVBuffer:
        a = self.architecture
        if capacity > a.n_positions:
            raise ValueError(f"KV capacity {capacity} exceeds the model's {a.n_positions} positions")
        # each row's run of positions per head starts on a page boundary, so a row commits
        # whole pages of its own and nothing of its neighbours'
        per_page = max(1, mmap.PAGESIZE // (a.head_dim * 4))
        capacity = min(a.n_positions, -(-capacity // per_page) * per_page)
        shape = (max(rows, max_rows or rows) + self.min_rows - 1, a.n_head, capacity, a.head_dim)
        full, memory = zip(*(_anonymous_array(shape) for _ in self.past_names))
        return KVBuffer(list(full), list(memory), np.zeros(rows, np.int64), self.min_rows)


def load_decoder(graph_file: Path, architecture: Architecture, threads: int | None, min_rows: int = 1) -> Decoder:
    """A Decoder over a variant's (verified) `kv_buffer` graph file, once the architecture its manifest
    claims is found to be the graph's own (`gpt2_onnx.graph_shapes`). `min_rows` > 1 (a precision whose
    one-row kernel may differ) holds only where this CPU's lone row is not exact (`lone_row_is_exact`)."""
    session = create_session(graph_file, threads)
    check_graph_architecture(session, graph_file, architecture)
    return probed_decoder(session, architecture, min_rows)


def probed_decoder(session: ort.InferenceSession, architecture: Architecture, min_rows: int) -> Decoder:
    """A Decoder whose calls bind at least `min_rows` rows, unless a lone row is exact alone on this CPU."""
    lone = Decoder(session, architecture, 1)
    return lone if min_rows == 1 or lone_row_is_exact(lone) else Decoder(session, architecture, min_rows)


def lone_row_is_exact(decoder: Decoder) -> bool:
    """Whether a one-row call gives a row bit for bit what it gets in a call of two, on this CPU.
    onnxruntime picks MatMulNBits' kernels by CPU: on an AMD EPYC (AVX-512 VNNI) the one-row
    kernel quantizes activations as the several-row one does, on an Intel Xeon (AVX-512 VNNI,
    AMX) and an AMD EPYC with AVX2 only it does not (logits differed by up to 0.17 at full
    size). Both rows of a two-row step after a prompt are compared with each row stepped alone,
    so neither one input that happens to agree nor a row's place in the call decides it; any
    difference keeps scratch rows."""
    probe = Decoder(decoder.session, decoder.architecture, 1)
    v = decoder.architecture.vocab_size
    prompts = [[v // 2, v // 5, v // 7], [v // 3, v // 11, v // 13]]  # equal lengths: one prefill call
    steps = np.array([v // 17, v // 19])
    cache, _ = probe.prefill(prompts, len(prompts[0]) + 1)
    pair = probe.step(cache, steps)  # [2, vocab]: one token per row after a past
    for r, prompt in enumerate(prompts):
        cache, _ = probe.prefill([prompt], len(prompt) + 1)
        if not np.array_equal(probe.step(cache, steps[r : r + 1])[0], pair[r]):
            return False
    return True
