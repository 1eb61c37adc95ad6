"""The engine: the one decode loop, over a batch that requests join and leave at step boundaries.

    submit ─> waiting ─admit (free rows, KV budget)─> prefilling: one row, a chunk per step
          ─last chunk─> its sequences' rows (num_return_sequences, or num_beams) decode ─> leave
    step(): cancellations │ admissions │ plan ─> run ─> commit │ stats published
    commit: per request: tokens computed, processors ─> greedy | sample | beams | verify ─> events,
            rejected proposals taken back, full rows slid, finished rows gone │ rows laid out once

`Generator.generate` and `stream` drive an engine of their own in the caller's thread
(`steps`, `run_until_done`); a server drives a long-lived one from a thread of its own
(`serve_forever`). Every request has its own options, processors and random generator, and
every kernel is row-exact (`Precision`), so a request's tokens are the same whatever else is
in the batch.

Rows live in one KV cache (`session.KVBuffer`): decoding rows first, grouped by request, then
one row per admitted request whose prompt is being prefilled, in arrival order. Each request
holds how many positions its rows hold (`Active.computed`) and where they are (`first`,
`width`); `_lay_out` is the one place rows move and the cache's lengths are written.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from . import plan as planning
from .errors import ContextLengthError, GenerationOptionError
from .option_registry import PROMPT
from .prefix_cache import PrefixCache
from .requests import FINISH_CANCELLED, FINISH_ERROR, FINISH_LENGTH, Event, Request
from .sequences import Active
from .session import Decoder, KVBuffer
from .text import TextCodec
from .window import slide_if_full, window_head


@dataclass(frozen=True)
class Stats:
    """What the engine held after a step: published once a step, read by other threads (/metrics)."""

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

    def __init__(
        self,
        decoder: Decoder,
        codec: TextCodec,
        max_rows: int,
        capacity: int,
        budget_positions: int | None = None,
        prefill_chunk: int | None = None,
        prefix_cache: PrefixCache | None = None,
    ):
        self.decoder, self.codec = decoder, codec
        self.max_rows, self.capacity = max_rows, capacity
        self.budget = budget_positions if budget_positions is not None else max_rows * capacity
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache
        self.proposed_tokens = self.accepted_tokens = 0
        self.cache: KVBuffer = decoder.empty(0, capacity, max_rows)
        self.decoding: list[Active] = []  # in row order
        self.prefilling: list[Active] = []  # one row each, after the decoding rows
        self.waiting: deque[Request] = deque()
        self._cancelled: set[Request] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a submission or cancellation arrived
        self._publish()

    # --- called from any thread -----------------------------------------------------------

    def check(self, request: Request) -> None:
        """Refuse a request that could never fit this engine: more rows than it decodes at once
        or a `context_keep` that leaves no window (GenerationOptionError), more positions than
        a row holds or more than the KV budget (ContextLengthError)."""
        if request.rows > self.max_rows:
            beams = request.config.num_beams
            with_beams = f" with num_beams={beams}" if beams > 1 else ""
            raise GenerationOptionError(
                f"num_return_sequences={request.config.num_return_sequences}{with_beams} "
                f"needs {request.rows} rows at once, more than the {self.max_rows} this engine decodes "
                "(its max_rows); ask for fewer",
                option="num_beams" if beams > 1 else "num_return_sequences",
                limit=("max_rows", self.max_rows),
            )
        sliding = request.config.context_overflow == "slide"
        if sliding:
            window_head(request, self.capacity)  # refuses a context_keep that leaves no room
        total = len(request.prompt_ids) + (1 if sliding else request.config.max_new_tokens)
        if total > self.capacity or self._reservation(request) > self.budget:
            raise ContextLengthError(
                f"the request needs {request.rows} row(s) of {len(request.prompt_ids)} prompt + "
                f"{request.config.max_new_tokens} new tokens; this engine holds {self.max_rows} rows of "
                f"{self.capacity} "
                f"positions with a KV budget of {self.budget} positions; shorten the prompt or max_new_tokens",
                option=PROMPT,
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
        """The snapshot the last step published (safe from any thread: it is never changed)."""
        return self._stats

    # --- driving it -------------------------------------------------------------------------

    def steps(self) -> Iterator[None]:
        """Step while there is work, yielding after each step (a caller may submit or read
        events in between); the one way to drive an engine in the caller's thread."""
        while True:
            more = self.step()
            yield
            if not (more or self.has_work):
                return

    def run_until_done(self) -> int:
        """Step until every submitted request has ended; returns the steps taken."""
        return sum(1 for _ in self.steps())

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
            requests = [a.request for a in self.decoding + self.prefilling] + list(self.waiting)
            self.waiting.clear()
            self._cancelled.clear()
        self.decoding, self.prefilling = [], []
        self.cache = self.decoder.empty(0, self.capacity, self.max_rows)
        for request in requests:
            for slot in range(request.config.num_return_sequences):
                request.on_event(Event(slot, (), "", FINISH_ERROR))
        self._publish()

    # --- the loop -------------------------------------------------------------------------

    def step(self) -> bool:
        """One step of the loop; returns whether work remains."""
        self._drop_cancelled()
        self._admit()
        plan = planning.plan(self.decoding, self.prefilling, self.cache, self.capacity, self.prefill_chunk)
        self._commit(plan, planning.run(self.decoder, self.cache, plan))
        self._publish()
        return self.has_work

    def _commit(self, plan: planning.Plan, logits: list[np.ndarray | None]) -> None:
        """The step's outcome: each request's rows hold the tokens they ran, less the proposals
        its verification rejected (taken back here, once); tokens are chosen and sent; rows
        that go on slide when full; the rows are laid out once."""
        going_on: list[tuple[Active, list[int]]] = []
        for work, out in zip(plan.works, logits):
            a = work.active
            a.computed += work.tokens
            if not work.chooses:
                continue  # a prompt's chunk with more to come
            rows = list(a.span)
            if work.proposal:
                accepted = a.verify(out[0], list(work.proposal))  # out: [1, 1 + proposal, vocab]
                kept = [] if accepted is None else rows
                if accepted is not None:
                    a.computed -= len(work.proposal) - accepted  # the rejected proposals' positions
                    self.proposed_tokens += len(work.proposal)
                    self.accepted_tokens += accepted
            else:
                if a.new_tokens == 0:  # its prompt is complete
                    self._prompt_done(a, work.first)
                kept = a.advance(out[:, 0], rows, self.codec)  # out: [rows, 1, vocab]
            if kept:
                slide_if_full(self.decoder, self.cache, a, kept, self.capacity)
                going_on.append((a, kept))
        self._lay_out(going_on, [a for a in self.prefilling if a.new_tokens == 0])

    def _lay_out(
        self,
        decoding: list[tuple[Active, list[int]]],
        prefilling: list[Active],
        joining: Sequence[Active] = (),
    ) -> None:
        """The one place rows move, the cache's lengths are written and the engine's row order is
        set. `decoding`: the requests that decode from now on, each with the rows of now its rows
        continue (a row repeated: beams), laid out first in an order that moves few rows
        (`plan.settle`); `prefilling`: prompts part-way, one row each, in arrival order after
        them; `joining`: requests taking one new row each after those, their cached blocks
        written there already. Every row holds its request's `computed` positions."""
        cache = self.cache
        for a in self.decoding + self.prefilling:  # what the rows of now hold: copies and freed pages follow it
            cache.lengths[a.first : a.first + a.width] = a.computed
        decoding = [decoding[i] for i in planning.settle([sources for _, sources in decoding])]
        rows = decoding + [(a, [a.first]) for a in prefilling]
        cache.select(np.array([r for _, sources in rows for r in sources], np.int64))
        if joining:
            cache.append(len(joining))
        first = 0
        for a, width in [*((a, len(sources)) for a, sources in rows), *((a, 1) for a in joining)]:
            a.first, a.width = first, width
            cache.lengths[first : first + width] = a.computed
            first += width
        self.decoding = [a for a, _ in decoding]
        self.prefilling = [*prefilling, *joining]

    def _publish(self) -> None:
        """Replace the stats snapshot (the engine's thread only: readers never see a step half-done)."""
        active = self.decoding + self.prefilling
        cache = self.prefix_cache.stats() if self.prefix_cache is not None else None
        with self._lock:
            waiting = len(self.waiting)
        self._stats = Stats(
            len(self.decoding),
            sum(a.width for a in self.decoding),
            len(self.prefilling),
            waiting,
            sum(a.reserved for a in active),
            self.budget,
            self.max_rows,
            self.proposed_tokens,
            self.accepted_tokens,
            *((cache.hits, cache.misses, cache.bytes) if cache else ()),
        )

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
        self._lay_out(
            [(a, list(a.span)) for a in self.decoding if a not in gone], [a for a in self.prefilling if a not in gone]
        )

    def _admit(self) -> None:
        active = self.decoding + self.prefilling
        reserved, rows = sum(a.reserved for a in active), sum(a.request.rows for a in active)
        joining: list[Active] = []
        while True:
            with self._lock:
                if not self.waiting:
                    break
                request = self.waiting[0]
                need = self._reservation(request)
                if rows + request.rows > self.max_rows or reserved + need > self.budget:
                    break
                self.waiting.popleft()
            if request.config.max_new_tokens == 0:
                for slot in range(request.config.num_return_sequences):
                    request.on_event(Event(slot, (), "", FINISH_LENGTH))
                continue
            joining.append(Active(request, need))
            if self.prefix_cache is not None:
                self._start_from_cache(joining[-1], len(self.cache.lengths) + len(joining) - 1)
            reserved, rows = reserved + need, rows + request.rows
        if joining:
            self._lay_out([(a, list(a.span)) for a in self.decoding], self.prefilling, joining)

    def _start_from_cache(self, active: Active, row: int) -> None:
        """Copy the cached blocks the prompt begins with into the row it is about to take (the
        last); prefill goes on after them. Nothing before it in the prefill queue has started,
        so it keeps the queue's rule (only the first prompts are part-way). The request keeps the
        count (`Request.cached_tokens`: a server's usage), set before any of its events."""
        blocks = self.prefix_cache.lookup(active.request.prompt_ids)
        for k, kv in enumerate(blocks):
            self.cache.write_positions(row, k * self.prefix_cache.block_size, kv)
        active.computed = active.request.cached_tokens = len(blocks) * self.prefix_cache.block_size

    def _prompt_done(self, active: Active, row: int) -> None:
        """A prompt's last chunk ran: its history starts, and the prefix cache keeps its blocks."""
        active.histories = [list(active.request.prompt_ids)]
        if self.prefix_cache is not None:
            self.prefix_cache.insert(
                active.request.prompt_ids, lambda start, end: self.cache.read_positions(row, start, end)
            )
