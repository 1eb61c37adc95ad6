"""One long-lived engine in a thread of its own, and the bridge from its events to asyncio.

    handler ─Service.submit(job)─> every prompt's request built and checked (400) ─> admission
            (in-flight limit, 429) ─> engine.submit per prompt
    engine thread: on_event ─Mailbox (one loop wake-up for a step's events)─> the call's asyncio.Queue ─> handler
    handler leaves early (client gone, server closing, error) ─> Call.cancel ─> engine.cancel: rows leave next step

An engine sequence fills `Job.copies` choices (n when greedy: one sequence for n identical ones).
A prompt of token ids runs as given (checked against the vocabulary: 400 on `prompt`); its echo is its text.

A request counts as in flight from submission until the engine's last event for it (a
finish or a cancellation), so the limit never counts a freed row and never misses a held one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpt2_onnx.engine import FINISH_CANCELLED, FINISH_ERROR, Event, Request, Stats
from gpt2_onnx.errors import GenerationOptionError
from gpt2_onnx.generator import Generator

from .metrics import Metrics
from .openai_api import ApiError, Choice, Job, check_n, engine_failed, job_requests, prompt_texts, request_error
from .settings import Capacity

RETRY_AFTER_S = 1  # a 429's Retry-After: rows free up within a few steps

_ENDED = object()  # queued when the handler's `ended` future completes


class Mailbox:
    """Engine thread → event loop: what is posted while the loop has not yet run the last
    delivery joins it, so a step's events for every stream cost the loop one wake-up (and the
    engine one write to the loop's self-pipe), not one per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: list[tuple[Callable, tuple]] = []
        self._lock = threading.Lock()

    def post(self, function: Callable, *args) -> None:
        """Run `function(*args)` in the loop soon (any thread; dropped once the loop has closed)."""
        with self._lock:
            self._items.append((function, args))
            if len(self._items) > 1:
                return  # a delivery is scheduled and has not run: it takes this too
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop has closed (shutdown): nobody waits, and the engine must go on
            with self._lock:
                self._items.clear()

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for function, args in items:
            function(*args)


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


@dataclass(eq=False)
class Call:
    """One API call's engine requests and the queue their events arrive on."""

    job: Job
    service: Service
    mailbox: Mailbox
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    requests: list[Request] = field(default_factory=list)
    prompt_texts: list[str] = field(default_factory=list)  # per prompt, as echo shows it
    choices: list[Choice] = field(default_factory=list)
    open_slots: list[int] = field(default_factory=list)  # per request: sequences not finished (engine thread)
    submitted: float = field(default_factory=time.perf_counter)
    last_token: dict[tuple[int, int], float] = field(default_factory=dict)  # per (request, slot)
    started: set[int] = field(default_factory=set)  # requests with a first token
    remaining: int = 0  # choices not finished (event loop)
    watching: bool = False  # `ended` puts _ENDED into the queue when it completes

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt_ids) for r in self.requests)

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens the prefix cache supplied (the engine sets each request's before its first event)."""
        return sum(r.cached_tokens for r in self.requests)

    async def next(self, ended: asyncio.Future) -> tuple[int, Event]:
        """The next (choice index, event). If `ended` completes first, the exception it returns is
        raised (ClientGone, or the server's ApiError when it stops answering); an engine failure
        is a 500 ApiError."""
        if not self.watching:  # once per call, not a task and a wait per token
            ended.add_done_callback(lambda _: self.queue.put_nowait(_ENDED))
            self.watching = True
        item = await self.queue.get()
        if item is _ENDED:
            raise ended.result()
        index, event = item
        if event.finish_reason == FINISH_ERROR:
            raise engine_failed()
        if self.choices[index].add(event, self.service.piece):
            self.remaining -= 1
        return index, event

    def cancel(self) -> None:
        """Cancel every request with a choice this loop has not seen finish (event loop: it reads only
        the loop's own `choices`, never the engine thread's `open_slots`; a request that finished
        meanwhile is skipped by the engine, and has said so already)."""
        n = self.job.n
        for i, request in enumerate(self.requests):
            if any(c.finish_reason is None for c in self.choices[i * n : (i + 1) * n]):
                self.service.engine.cancel(request)

    def _on_event(self, i: int, event: Event) -> None:
        """Engine thread: metrics, in-flight accounting, then hand the event to the loop."""
        now, key, metrics = time.perf_counter(), (i, event.slot), self.service.metrics
        if event.tokens:
            metrics.generated_tokens.inc(len(event.tokens))
            last = self.last_token.get(key)
            if i not in self.started:
                self.started.add(i)
                metrics.time_to_first_token.observe(now - self.submitted)
            elif last is not None:
                metrics.inter_token_latency.observe(now - last)
            self.last_token[key] = now
        if event.finish_reason:
            self.open_slots[i] -= 1
            if self.open_slots[i] == 0:
                if event.finish_reason == FINISH_CANCELLED:  # it ends every open sequence: counted once, at the last
                    metrics.cancelled.inc()
                self.service.release(1)
        self.mailbox.post(self._put, self.job.choice_indices(i, event.slot), event)

    def _put(self, indices: range, event: Event) -> None:
        for index in indices:
            self.queue.put_nowait((index, event))


class Service:
    """The generator, its engine and the thread that drives it."""

    def __init__(self, generator: Generator, capacity: Capacity):
        self.generator, self.capacity = generator, capacity
        # each row may hold the model's whole context: a request of any length joins
        self.engine = generator.new_engine(
            capacity.max_running, kv_cache_mb=capacity.kv_cache_mb, prefill_chunk=capacity.prefill_chunk
        )
        self.metrics: Metrics | None = None
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.engine.serve_forever, args=(self._stop,), name="gpt2-onnx-engine", daemon=True
        )
        self.piece = generator.token_text
        self._mailboxes: dict[asyncio.AbstractEventLoop, Mailbox] = {}

    def mailbox(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        """The loop's one mailbox (its calls' events share its wake-ups)."""
        with self._lock:
            for closed in [old for old in self._mailboxes if old.is_closed()]:  # a test's, or a restarted app's
                del self._mailboxes[closed]
            return self._mailboxes.setdefault(loop, Mailbox(loop))

    def start(self, metrics: Metrics) -> None:
        """Build what a first request would otherwise build in the event loop, then start the engine thread."""
        self.metrics = metrics
        self.generator.prepare_constraints()  # 0.2 s that would stall every other request
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def stats(self) -> Stats:
        return self.engine.stats()

    def release(self, count: int) -> None:
        with self._lock:
            self.in_flight -= count

    def submit(self, job: Job) -> Call:
        """Build, check and submit the job's requests: 400 for bad options, an n past --max-running or a
        prompt that cannot fit (before any is submitted), 429 when the running and waiting limits are full."""
        generator, call = self.generator, Call(job, self, self.mailbox(asyncio.get_running_loop()))
        check_n(job, self.capacity.max_running)
        try:
            requests = job_requests(generator, job, call._on_event)
            for request in requests:
                self.engine.check(request)
        except GenerationOptionError as e:
            raise request_error(e) from None
        with self._lock:
            if self.in_flight + len(requests) > self.capacity.max_running + self.capacity.max_waiting:
                self.metrics.rejected.inc()
                raise ApiError(
                    429,
                    f"the server is full: {self.in_flight} requests are running or waiting "
                    f"(limit {self.capacity.max_running} running + {self.capacity.max_waiting} waiting); retry later",
                    None,
                    "too_many_requests",
                    "rate_limit_error",
                    {"Retry-After": str(RETRY_AFTER_S)},
                )
            self.in_flight += len(requests)
        call.requests, call.open_slots = requests, [r.config.num_return_sequences for r in requests]
        call.prompt_texts = prompt_texts(generator, job)
        call.choices, call.remaining = [Choice() for _ in range(len(requests) * job.n)], len(requests) * job.n
        for request in requests:
            self.engine.submit(request)  # checked above: it fits
            self.metrics.requests.inc()
            self.metrics.prompt_tokens.inc(len(request.prompt_ids))
        return call
