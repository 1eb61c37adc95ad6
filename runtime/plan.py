"""A step of the engine as data: which rows run how many tokens (`plan`), then running it (`run`).

    engine state ─plan─> Plan: works (per request: its rows, tokens, proposal) + calls (Decoder.run each)
                 ─run──> logits per work [rows, positions, vocab]          (pure: the cache's lengths stay)
                 ─the engine's commit─> lengths, tokens chosen, rows that go on     (`Engine._commit`)

Rows are laid out as the engine keeps them: decoding requests (each over its rows), then one row
per request whose prompt is being prefilled. Every row runs at most once a step, so every call of
a step reads the lengths the last commit left; the decode call runs first, because a row it binds
as scratch (`Precision.min_call_rows`) is written at that length, which only the row's own
prompt chunk, later in the step, moves past.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .sequences import Active
from .session import CONTINUING_ROWS, Decoder, KVBuffer

# Proposals are verified while at most this many rows decode: a call of several tokens after a
# past takes CONTINUING_ROWS rows (onnxruntime's GroupQueryAttention), and a pass per row in a
# batch costs more than it saves.
SPECULATION_MAX_ROWS = CONTINUING_ROWS


@dataclass(frozen=True)
class Work:
    """One request's part of a step: its rows [first, first + width) each take `tokens` more
    tokens after the `active.computed` they hold. `proposal`: tokens verified after the pending
    one; `chooses`: its logits choose tokens (a decode, a verification, a prompt's last chunk)."""

    active: Active
    first: int
    width: int
    tokens: int
    proposal: tuple[int, ...] = ()
    chooses: bool = True

    @property
    def positions(self) -> int:
        """Logits positions it needs per row: the pending token's, then one per proposal."""
        return 1 + len(self.proposal)


@dataclass(frozen=True)
class Call:
    """One `Decoder.run`: rows [first, first + len(ids)) take ids [rows, seq]; `works`: indices
    of the plan's works it carries, in row order."""

    first: int
    ids: np.ndarray  # [rows, seq] int64
    every_position: bool
    works: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """A step: works in the order they commit (decoding requests, then prompt chunks, each in
    row order) and the calls that run them (the decode call first, see the module note)."""

    works: tuple[Work, ...]
    calls: tuple[Call, ...]


def plan(
    decoding: Sequence[Active], prefilling: Sequence[Active], cache: KVBuffer, capacity: int, prefill_chunk: int | None
) -> Plan:
    """The step for these requests, whose rows (spans) the engine laid out in `cache`. Only a
    speculating request's pause count moves (`Speculation.propose`)."""
    chunks, chunk_calls = _prefill(prefilling, prefill_chunk, len(decoding))  # works after the decoding requests'
    after = cache.lengths.copy()  # [rows]: what the rows hold once the prompt chunks ran
    for work in chunks:
        after[work.first] += work.tokens
    decodes, decode_call = _decode(decoding, after, capacity, cache.min_rows)
    return Plan((*decodes, *chunks), (*([decode_call] if decode_call else []), *chunk_calls))


def run(decoder: Decoder, cache: KVBuffer, step: Plan) -> list[np.ndarray | None]:
    """Each work's logits [width, positions, vocab] (None for a chunk that chooses nothing);
    the cache's keys and values are written, its lengths are not."""
    out: list[np.ndarray | None] = [None] * len(step.works)
    for call in step.calls:
        logits = decoder.run(cache, call.first, call.ids, every_position=call.every_position)
        if not call.every_position:
            logits = logits[:, None]  # [rows, 1, vocab]: the last position
        for i in call.works:
            work = step.works[i]
            if work.chooses:
                out[i] = logits[work.first - call.first : work.first - call.first + work.width, : work.positions]
    return out


def _prefill(prefilling: Sequence[Active], budget: int | None, first_work: int) -> tuple[list[Work], list[Call]]:
    """Prompt chunks within the step's budget, first prompts first: prompts of one length not
    started yet run in one call; a prompt longer than the budget, or continuing after cached
    blocks, runs alone, a chunk a step. The first prompts only, so the row after them is untouched.
    `first_work`: the plan's index of the first chunk's work."""
    left_budget = budget or float("inf")
    works: list[Work] = []
    calls: list[Call] = []
    i = 0
    while i < len(prefilling) and left_budget > 0:
        head = prefilling[i]
        point = (head.computed, len(head.request.prompt_ids))
        group = list(
            itertools.takewhile(lambda a, point=point: (a.computed, len(a.request.prompt_ids)) == point, prefilling[i:])
        )
        left = point[1] - point[0]
        take = int(min(left, left_budget))
        width = 1 if take < left else int(min(len(group), max(1, left_budget // left)))
        if head.computed > 0 and take > 1:  # several tokens after a past
            width = min(width, CONTINUING_ROWS)
        group = group[:width]
        ids = np.array([a.request.prompt_ids[a.computed : a.computed + take] for a in group], np.int64)  # [group, take]
        index = first_work + len(works)
        calls.append(Call(head.first, ids, False, tuple(range(index, index + len(group)))))
        works += [Work(a, a.first, 1, take, chooses=take == left) for a in group]
        left_budget -= take * len(group)
        if take < left:
            break  # the rest of this prompt runs in later steps
        i += len(group)
    return works, calls


def _decode(
    decoding: Sequence[Active], after: np.ndarray, capacity: int, min_rows: int
) -> tuple[list[Work], Call | None]:
    """One call for every decoding row: its pending token, then a speculating request's proposal."""
    if not decoding:
        return [], None
    rows = sum(a.width for a in decoding)
    proposals = _proposals(decoding, rows, after[: max(rows, min_rows)], capacity)
    seq = 1 + max(map(len, proposals))
    ids = np.zeros((rows, seq), np.int64)  # [rows, seq]: pending token, proposal, padding
    works = []
    for a, proposal in zip(decoding, proposals):
        ids[a.first : a.first + a.width, 0] = a.next_tokens
        ids[a.first, 1 : 1 + len(proposal)] = proposal
        works.append(Work(a, a.first, a.width, 1 + len(proposal), tuple(proposal)))
    return works, Call(0, ids, seq > 1, tuple(range(len(works))))


def _proposals(decoding: Sequence[Active], rows: int, bound: np.ndarray, capacity: int) -> list[list[int]]:
    """Each decoding request's proposed tokens ([] for none), within the room every row a call
    of these rows binds has (`bound`: their lengths after this step's prompt chunks) and the
    request's tokens left."""
    if rows > SPECULATION_MAX_ROWS or not any(a.speculation for a in decoding):
        return [[] for _ in decoding]
    room = int(capacity - bound.max()) - 1
    return [
        a.speculation.propose(
            a.histories[0],
            min(room, a.request.config.max_new_tokens - a.new_tokens - 1),
            a.request.processors.stop_token_ids,
        )
        if a.speculation and room > 0
        else []
        for a in decoding
    ]


def settle(sources: Sequence[Sequence[int]]) -> list[int]:
    """The row order of requests that go on (`sources`: the rows each continues from, as they
    lie now), as indices into `sources`, so that they take rows [0, total) contiguously while
    as few rows as possible move: a request already in one piece within [0, total) keeps its
    rows, the others fill the gaps left by requests that left (first fit). When the gaps do not
    fit them (requests of several rows), every request keeps its order and the rows shift down.

    Rows that move are copied (`KVBuffer.select`: every position they hold), so a request that
    leaves costs one row's copy, not a copy of every row after it."""
    total = sum(map(len, sources))
    first: dict[int, int] = {}  # index → its first row from now on
    movers = []
    for i, rows in enumerate(sources):
        start = rows[0]
        if list(rows) == list(range(start, start + len(rows))) and start + len(rows) <= total:
            first[i] = start
        else:
            movers.append(i)
    if not movers:  # the common step: every request keeps its rows
        return sorted(first, key=first.__getitem__)
    taken = np.zeros(total, bool)
    for i, start in first.items():
        taken[start : start + len(sources[i])] = True
    free = np.flatnonzero(~taken)
    gaps = [[int(g[0]), len(g)] for g in np.split(free, np.flatnonzero(np.diff(free) != 1) + 1) if len(g)]
    for i in movers:
        gap = next((g for g in gaps if g[1] >= len(sources[i])), None)
        if gap is None:
            return list(range(len(sources)))
        first[i], gap[0], gap[1] = gap[0], gap[0] + len(sources[i]), gap[1] - len(sources[i])
    return sorted(first, key=first.__getitem__)
