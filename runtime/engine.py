"""The engine: the one decode loop, over a batch that requests join and leave at step boundaries.

    submit ─> waiting ─admit (free rows, KV budget)─> prefilling: one row, a chunk per call
          ─last chunk─> its sequences' rows (num_return_sequences, or num_beams) decode ─> leave
    step(): cancellations │ admissions │ prefill chunks │ one decode call for every decoding row
            │ per request: processors ─> greedy | sample | beams ─> events │ rows reordered once

`Generator.generate` and `stream` drive an engine of their own in the caller's thread; a
server drives a long-lived one from a thread of its own. Every request has its own
options, processors and random generator, and every kernel is row-exact (`Precision`), so
a request's tokens are the same whatever else is in the batch.

Rows live in one KV cache (`session.KVBuffer`): decoding rows first, grouped by request,
then one row per admitted request whose prompt is being prefilled, in arrival order.
Prefill works on the first prompts only, so the row after them is always untouched (a
scratch row for kernels that need two rows is never one holding a prompt being prefilled).
"""

from __future__ import annotations

import itertools
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass

import numpy as np

from .errors import ContextLengthError, GenerationOptionError
from .prefix_cache import PrefixCache
from .requests import FINISH_CANCELLED, FINISH_ERROR, FINISH_LENGTH, Event, Request
from .sequences import Active
from .session import CONTINUING_ROWS, Decoder, KVBuffer
from .text import TextCodec

# Proposals are verified while at most this many rows decode: a call of several tokens after a
# past takes CONTINUING_ROWS rows (onnxruntime's GroupQueryAttention), a pass per row in a batch
# costs more than it saves, and the kernel that takes a batch in one pass scans every row's whole
# capacity (`gpt2_onnx.benchmarks.batched_verify` measures its break-even).
SPECULATION_MAX_ROWS = CONTINUING_ROWS


@dataclass(frozen=True)
class Stats:
    """What the engine holds now (for /metrics)."""

    decoding_requests: int
    decoding_rows: int
    prefilling_requests: int
    waiting_requests: int
    reserved_positions: int
    budget_positions: int
    max_rows: int
    proposed_tokens: int = 0  # speculative decoding, since the engine started
    accepted_tokens: int = 0
    prefix_cache_hits: int = 0  # prompts that began with cached blocks
    prefix_cache_misses: int = 0
    prefix_cache_bytes: int = 0


class Engine:
    """Rows join and leave one KV cache of `max_rows` rows × `capacity` positions; at most
    `budget_positions` positions are reserved at once (each request reserves prompt +
    max_new_tokens per row, at most `capacity`). `prefill_chunk`: prompt tokens run per
    step (None: all). `prefix_cache`: prompts start from the cached blocks they begin with."""

    def __init__(self, decoder: Decoder, codec: TextCodec, max_rows: int, capacity: int,
                 budget_positions: int | None = None, prefill_chunk: int | None = None,
                 prefix_cache: PrefixCache | None = None):
        self.decoder, self.codec = decoder, codec
        self.max_rows, self.capacity = max_rows, capacity
        self.budget = budget_positions if budget_positions is not None else max_rows * capacity
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache
        self.proposed_tokens = self.accepted_tokens = 0
        self.cache: KVBuffer = decoder.empty(0, capacity, max_rows)
        self.decoding: list[Active] = []  # in row order
        self.prefilling: list[Active] = []  # one row each, after the decoding rows
        self.entering: list[Active] = []  # within a step: prompts just completed, in neither list until it ends
        self.waiting: deque[Request] = deque()
        self._cancelled: set[Request] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a submission or cancellation arrived

    # --- called from any thread -----------------------------------------------------------

    def check(self, request: Request) -> None:
        """Refuse a request that could never fit this engine: more rows than it decodes at once
        or a `context_keep` that leaves no window (GenerationOptionError), more positions than
        a row holds or more than the KV budget (ContextLengthError)."""
        if request.rows > self.max_rows:
            beams = request.config.num_beams
            raise GenerationOptionError(
                f"num_return_sequences={request.config.num_return_sequences}{f' with num_beams={beams}' if beams > 1 else ''} "
                f"needs {request.rows} rows at once, more than the {self.max_rows} this engine decodes "
                "(a server's --max-running); ask for fewer"
            )
        sliding = request.config.context_overflow == "slide"
        if sliding:
            window_head(request, self.capacity)  # refuses a context_keep that leaves no room
        total = len(request.prompt_ids) + (1 if sliding else request.config.max_new_tokens)
        if total > self.capacity or self._reservation(request) > self.budget:
            raise ContextLengthError(
                f"the request needs {request.rows} row(s) of {len(request.prompt_ids)} prompt + "
                f"{request.config.max_new_tokens} new tokens; this engine holds {self.max_rows} rows of {self.capacity} "
                f"positions with a KV budget of {self.budget} positions; shorten the prompt or max_new_tokens"
            )

    def submit(self, request: Request) -> None:
        """Queue a request; refused at once (`check`) if it could never fit."""
        self.check(request)
        with self._lock:
            self.waiting.append(request)
            self._wake.notify()

    def cancel(self, request: Request) -> None:
        """The request's rows leave at the next step boundary, with a `cancelled` event per open sequence."""
        with self._lock:
            self._cancelled.add(request)
            self._wake.notify()

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.decoding or self._cancelled)

    def stats(self) -> Stats:
        active = self.decoding + self.prefilling
        cache = self.prefix_cache.stats() if self.prefix_cache is not None else None
        return Stats(len(self.decoding), sum(len(a.histories) for a in self.decoding), len(self.prefilling),
                     len(self.waiting), sum(a.reserved for a in active), self.budget, self.max_rows,
                     self.proposed_tokens, self.accepted_tokens, *((cache.hits, cache.misses, cache.bytes) if cache else ()))

    def serve_forever(self, stop: threading.Event, idle_wait_s: float = 0.1) -> None:
        """Step while there is work, sleep until a submission otherwise, until `stop` is set
        (a server's engine thread)."""
        while not stop.is_set():
            with self._wake:
                if not self.has_work:
                    self._wake.wait(idle_wait_s)
                    continue
            try:
                self.step()
            except Exception:  # no caller may wait forever on a step that failed
                traceback.print_exc(file=sys.stderr)
                self._fail_everything()

    def _fail_everything(self) -> None:
        """End every request with an `error` event and start from an empty cache."""
        with self._lock:
            held = [a.request for a in self.decoding + self.entering + self.prefilling] + list(self.waiting)
            requests = list(dict.fromkeys(held))  # a failing step may hold an entering request in two lists
            self.waiting.clear()
            self._cancelled.clear()
        self.decoding, self.entering, self.prefilling = [], [], []
        self.cache = self.decoder.empty(0, self.capacity, self.max_rows)
        for request in requests:
            for slot in range(request.config.num_return_sequences):
                request.on_event(Event(slot, (), "", FINISH_ERROR))

    # --- the loop -------------------------------------------------------------------------

    def step(self) -> bool:
        """One step of the loop; returns whether work remains."""
        self._drop_cancelled()
        self._admit()
        entering = self._prefill()  # (request, its row, logits [1, vocab]) whose prompt is complete
        self.entering = [a for a, _, _ in entering]
        keep: list[int] = []
        decoding = []
        for active, rows, logits, proposal in [*self._decode(), *((*e, []) for e in entering)]:
            if proposal:
                accepted = active.verify(logits, proposal)
                kept = [] if accepted is None else rows
                if accepted is not None:
                    self.cache.lengths[rows[0]] += accepted  # the kept proposals' positions
                    self.proposed_tokens, self.accepted_tokens = self.proposed_tokens + len(proposal), self.accepted_tokens + accepted
            else:
                kept = active.advance(logits, rows, self.codec)
            keep += kept
            if kept:
                decoding.append(active)
        first_prefilling = len(self.cache.lengths) - len(self.prefilling)
        keep += range(first_prefilling, len(self.cache.lengths))
        self.decoding = decoding
        self.cache.select(np.array(keep, np.int64))
        self.entering = []
        return self.has_work

    def _reservation(self, request: Request) -> int:
        return request.rows * min(self.capacity, len(request.prompt_ids) + request.config.max_new_tokens)

    def _drop_cancelled(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            queued = [r for r in self.waiting if r in cancelled]
            self.waiting = deque(r for r in self.waiting if r not in cancelled)
        if not cancelled:
            return
        gone = [a for a in self.decoding + self.prefilling if a.request in cancelled]
        for request in queued + [a.request for a in gone]:  # a request that finished meanwhile has said so already
            active = next((a for a in gone if a.request is request), None)
            decoding = active is not None and active.new_tokens > 0 and active.beams is None
            for slot in active.slots if decoding else range(request.config.num_return_sequences):
                request.on_event(Event(slot, (), "", FINISH_CANCELLED))
        keep, row = [], 0
        for a in self.decoding + self.prefilling:
            width = len(a.histories) if a in self.decoding else 1
            if a not in gone:
                keep += range(row, row + width)
            row += width
        self.decoding = [a for a in self.decoding if a not in gone]
        self.prefilling = [a for a in self.prefilling if a not in gone]
        self.cache.select(np.array(keep, np.int64))

    def _admit(self) -> None:
        reserved = sum(a.reserved for a in self.decoding + self.prefilling)
        rows = sum(a.request.rows for a in self.decoding + self.prefilling)
        while True:
            with self._lock:
                if not self.waiting:
                    return
                request = self.waiting[0]
                need = self._reservation(request)
                if rows + request.rows > self.max_rows or reserved + need > self.budget:
                    return
                self.waiting.popleft()
            if request.config.max_new_tokens == 0:
                for slot in range(request.config.num_return_sequences):
                    request.on_event(Event(slot, (), "", FINISH_LENGTH))
                continue
            active = Active(request, need)
            self.prefilling.append(active)
            self.cache.append(1)
            if self.prefix_cache is not None:
                self._start_from_cache(active, len(self.cache.lengths) - 1)
            reserved, rows = reserved + need, rows + request.rows

    def _start_from_cache(self, active: Active, row: int) -> None:
        """Copy the cached blocks the prompt begins with into its row; prefill goes on after them.
        The row is the last one and nothing before it in the prefill queue has started, so it
        keeps the queue's rule (only the first prompts are part-way)."""
        blocks = self.prefix_cache.lookup(active.request.prompt_ids)
        for k, kv in enumerate(blocks):
            self.cache.write_positions(row, k * self.prefix_cache.block_size, kv)
        active.filled = len(blocks) * self.prefix_cache.block_size
        self.cache.lengths[row] = active.filled

    def _prefill(self) -> list[tuple[Active, list[int], np.ndarray]]:
        """Prompt chunks within the step's budget, first prompts first: prompts of one length
        not started yet run in one call; a prompt longer than the budget, or continuing after
        cached blocks, runs alone, a chunk a step."""
        budget = self.prefill_chunk or float("inf")
        done = []
        row = len(self.cache.lengths) - len(self.prefilling)
        while self.prefilling and budget > 0:
            head = self.prefilling[0]
            point = (head.filled, len(head.request.prompt_ids))
            group = list(itertools.takewhile(lambda a: (a.filled, len(a.request.prompt_ids)) == point, self.prefilling))
            left = point[1] - point[0]
            take = int(min(left, budget))
            width = 1 if take < left else int(min(len(group), max(1, budget // left)))
            if head.filled > 0 and take > 1:  # several tokens after a past
                width = min(width, CONTINUING_ROWS)
            group = group[:width]
            ids = np.array([a.request.prompt_ids[a.filled:a.filled + take] for a in group], np.int64)
            logits = self.decoder.run(self.cache, row, ids)  # [group, vocab]
            budget -= take * len(group)
            for a in group:
                a.filled += take
            if take < left:
                break  # the rest of this prompt runs in later steps
            for k, a in enumerate(group):
                a.histories = [list(a.request.prompt_ids)]
                done.append((a, [row + k], logits[k:k + 1]))
                if self.prefix_cache is not None:
                    self.prefix_cache.insert(a.request.prompt_ids, lambda start, end, r=row + k: self.cache.read_positions(r, start, end))
            row += len(group)
            del self.prefilling[: len(group)]
        return done

    def _decode(self) -> list[tuple[Active, list[int], np.ndarray, list[int]]]:
        """One call for every decoding row, a speculating row's proposal after its pending
        token: (request, its rows, logits, its proposal) in row order. The logits are the
        rows' next-token logits [rows, vocab], or with a proposal the [len(proposal) + 1,
        vocab] that verify it."""
        if not self.decoding:
            return []
        self._slide_full_rows()
        tokens = [t for a in self.decoding for t in a.next_tokens]
        proposals = self._proposals(len(tokens))
        seq = 1 + max(map(len, proposals), default=0)
        ids = np.zeros((len(tokens), seq), np.int64)
        ids[:, 0] = tokens
        out, row = [], 0
        for a, proposal in zip(self.decoding, proposals):
            ids[row, 1:1 + len(proposal)] = proposal
            row += len(a.histories)
        logits = self.decoder.run(self.cache, 0, ids, every_position=seq > 1)  # [rows, vocab] or [rows, seq, vocab]
        if seq > 1:  # rows hold the pending token's position; `step` adds the accepted proposals'
            self.cache.lengths[: len(tokens)] -= seq - 1
        row = 0
        for a, proposal in zip(self.decoding, proposals):
            width = len(a.histories)
            own = logits[row:row + width]  # this request's rows
            out.append((a, list(range(row, row + width)),
                        own[0, : len(proposal) + 1] if proposal else own[:, 0] if seq > 1 else own, proposal))
            row += width
        return out

    def _proposals(self, rows: int) -> list[list[int]]:
        """Each decoding request's proposed tokens ([] for none), within the room every row of
        the call has (capacity) and the request's tokens left."""
        if rows > SPECULATION_MAX_ROWS or not any(a.speculation for a in self.decoding):
            return [[] for _ in self.decoding]
        bound = self.cache.lengths[: max(rows, self.decoder.min_rows)]  # scratch rows write as far
        room = int(self.capacity - bound.max()) - 1
        return [
            a.speculation.propose(a.histories[0], min(room, a.request.config.max_new_tokens - a.new_tokens - 1),
                                  a.request.processors.stop_token_ids) if a.speculation and room > 0 else []
            for a in self.decoding
        ]

    def _slide_full_rows(self) -> None:
        """A row with no position left for its next token re-encodes a window of its history:
        the family's prefix, `context_keep` prompt tokens, and the most recent tokens, half
        the context shorter than it was (so re-encoding is paid once per half context)."""
        rows = sum(len(a.histories) for a in self.decoding)
        if (self.cache.lengths[:rows] < self.capacity).all():
            return  # the common step: every row has room
        row = 0
        for a in self.decoding:
            for r, history in enumerate(a.histories):
                if self.cache.lengths[row + r] < self.capacity:
                    continue
                window = slide_window(history[:-1], a.request, self.capacity)  # the pending token is fed next
                scratch = self.decoder.empty(1, len(window))
                self.decoder.run(scratch, 0, np.array([window], np.int64))
                self.cache.replace_row(row + r, scratch.read_positions(0, 0, len(window)))
            row += len(a.histories)

def window_head(request: Request, capacity: int) -> list[int]:
    """What every window keeps of the prompt: its prefix and first `context_keep` tokens;
    refused (GenerationOptionError) when that leaves no room for recent tokens in a window
    of `capacity // 2`."""
    head = request.prompt_ids[: request.prefix_len + request.config.context_keep]
    if len(head) >= capacity // 2:
        raise GenerationOptionError(
            f"context_keep {request.config.context_keep} leaves no room for recent tokens in a window of {capacity // 2}"
        )
    return head


def slide_window(ids: list[int], request: Request, capacity: int) -> list[int]:
    """What a full row keeps of its ids: `window_head`, then the most recent tokens,
    `capacity // 2` in all."""
    head = window_head(request, capacity)
    return head + ids[len(ids) - (capacity // 2 - len(head)):]
