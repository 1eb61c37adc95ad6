"""The decode loop. `generate`, `stream`, batching and beam search are all this loop.

    prompts ──decoder.prefill──> cache, last logits [rows, vocab]
    repeat:  processors ─> select (greedy | sample | beams) ─> (parent row, token) per row
             cache.select(parents) when rows reorder or leave ─> decoder.step([rows]) ─> logits

Greedy and sampling rows each become one returned sequence ("slot") and leave the batch
when they stop; their tokens and text pieces are yielded as `Event`s as they appear. Beam
search keeps `num_beams` rows per prompt and yields each prompt's best hypotheses at
the end, by transformers' rules (length penalty, early stopping, candidate count).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .logits import Processors, greedy, log_softmax, sample
from .options import GenerationConfig
from .session import Decoder, KVBuffer
from .text import TextCodec, TextStream

FINISH_STOP = "stop"  # a stop token was generated (it is the last token id)
FINISH_STOP_STRING = "stop_string"  # a stop string appeared (the text ends before it)
FINISH_LENGTH = "length"  # max_new_tokens reached
BEAM_MASKED = -1.0e9  # transformers' score for excluded beam candidates


@dataclass(frozen=True)
class Event:
    """New output of one returned sequence: slot index = prompt index × num_return_sequences + j."""

    slot: int
    tokens: tuple[int, ...]
    text: str
    finish_reason: str | None = None


@dataclass
class Clock:
    """When the first new token was chosen (beam search yields its events only at the end)."""

    first_token: float | None = None

    def mark(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()


@dataclass(frozen=True)
class DecodeJob:
    """Everything one call decodes."""

    prompts: list[list[int]]  # ids with the family's prefix, one list per prompt
    config: GenerationConfig
    processors: Processors
    rng: np.random.Generator
    clock: Clock = field(default_factory=Clock)


@dataclass
class Batch:
    """Rows being decoded: their cache and histories."""

    cache: KVBuffer
    histories: list[list[int]]  # every id of the row so far: [rows][len]
    owners: list[int] = field(default_factory=list)  # slot (greedy/sample) or prompt (beams) of each row

    def select(self, rows: np.ndarray) -> None:
        if len(rows) == len(self.histories) and np.array_equal(rows, np.arange(len(rows))):
            return
        self.cache.select(rows)
        self.histories = [list(self.histories[r]) for r in rows]
        self.owners = [self.owners[r] for r in rows]

    def advance(self, decoder: Decoder, tokens: np.ndarray) -> np.ndarray:
        """Append one token per row and run it: [rows] ids → [rows, vocab] logits."""
        for history, t in zip(self.histories, tokens.tolist()):
            history.append(t)
        return decoder.step(self.cache, tokens)


def prefill(decoder: Decoder, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> tuple[Batch, np.ndarray]:
    """Run the prompts into a cache with room for every row the call will decode (beams,
    returned sequences) and every new token; only written positions take memory."""
    capacity = max(len(p) for p in prompts) + config.max_new_tokens
    rows = len(prompts) * max(config.num_beams, config.num_return_sequences)
    cache, logits = decoder.prefill(prompts, capacity, rows)  # logits [prompts, vocab]
    return Batch(cache, [list(p) for p in prompts], list(range(len(prompts)))), logits


def run(decoder: Decoder, codec: TextCodec, job: DecodeJob) -> Iterator[Event]:
    """Yield events until every returned sequence is finished."""
    if job.config.max_new_tokens == 0:
        n = job.config.num_return_sequences
        yield from (Event(s, (), "", FINISH_LENGTH) for s in range(len(job.prompts) * n))
        return
    batch, logits = prefill(decoder, job.prompts, job.config)
    if job.config.num_beams > 1:
        yield from _beam_search(decoder, codec, job, batch, logits)
    else:
        yield from _sample_or_greedy(decoder, codec, job, batch, logits)


def _sample_or_greedy(decoder, codec, job: DecodeJob, batch: Batch, logits: np.ndarray) -> Iterator[Event]:
    c, n = job.config, job.config.num_return_sequences
    if n > 1:  # every prompt's prefill is computed once, then its rows are repeated
        rows = np.repeat(np.arange(len(job.prompts)), n)
        batch.select(rows)
        logits = logits[rows]
    batch.owners = list(range(len(batch.histories)))
    streams = [TextStream(codec, c.stop) for _ in batch.owners]
    stop_ids = set(job.processors.stop_token_ids)
    for step in range(c.max_new_tokens):
        scores = job.processors(logits, batch.histories, step)
        tokens = sample(scores, c, job.rng) if c.sampling else greedy(scores)
        job.clock.mark()
        alive = []
        for r, (slot, token) in enumerate(zip(batch.owners, tokens.tolist())):
            text, hit_stop_string = streams[slot].push(token)
            reason = FINISH_STOP if token in stop_ids else FINISH_STOP_STRING if hit_stop_string else None
            if reason is None and step + 1 == c.max_new_tokens:
                reason = FINISH_LENGTH
            if reason in (FINISH_STOP, FINISH_LENGTH):
                text += streams[slot].finish()
            yield Event(slot, (token,), text, reason)
            if reason is None:
                alive.append(r)
        if not alive:
            return
        if len(alive) < len(batch.histories):  # finished rows leave the batch
            batch.select(np.array(alive))
            tokens = tokens[alive]
        logits = batch.advance(decoder, tokens)


def _beam_search(decoder, codec, job: DecodeJob, batch: Batch, logits: np.ndarray) -> Iterator[Event]:
    c = job.config
    beams = [BeamGroup(c, len(p), len(job.processors.stop_token_ids)) for p in job.prompts]
    rows = np.repeat(np.arange(len(job.prompts)), c.num_beams)
    batch.select(rows)
    logits = logits[rows]
    stop_ids = np.array(job.processors.stop_token_ids, np.int64)
    stop_set = set(job.processors.stop_token_ids)
    for step in range(c.max_new_tokens):
        scores = job.processors(log_softmax(logits), batch.histories, step)  # [groups × beams, vocab]
        last = step + 1 == c.max_new_tokens
        parents, tokens = [], []
        for g, prompt in enumerate(batch.owners[:: c.num_beams]):
            block = slice(g * c.num_beams, (g + 1) * c.num_beams)
            group_parents, group_tokens = beams[prompt].step(scores[block], batch.histories[block], stop_ids, last)
            parents.extend(group_parents + g * c.num_beams)
            tokens.extend(group_tokens)
        job.clock.mark()
        alive = [i for i, owner in enumerate(batch.owners) if not beams[owner].done]
        if not alive:
            break
        keep = np.array(parents)[alive]
        batch.select(keep)
        logits = batch.advance(decoder, np.array(tokens, np.int64)[alive])
    for prompt, group in enumerate(beams):
        for j, (tokens, _) in enumerate(group.best(c.num_return_sequences)):
            reason = FINISH_STOP if tokens and tokens[-1] in stop_set else FINISH_LENGTH
            yield Event(prompt * c.num_return_sequences + j, tuple(tokens), codec.decode(tokens), reason)


class BeamGroup:
    """One prompt's beams, following transformers' vectorised beam search step by step."""

    def __init__(self, config: GenerationConfig, prompt_length: int, n_stop_ids: int):
        self.c = config
        self.prompt_length = prompt_length
        nb = config.num_beams
        self.candidates = max(2, 1 + n_stop_ids) * nb
        self.running_scores = np.full(nb, BEAM_MASKED, np.float64)
        self.running_scores[0] = 0.0  # all beams start equal: only the first may expand
        self.finished: list[tuple[float, list[int]]] = []  # (length-penalised score, generated ids)
        self.improvable = True  # transformers' is_early_stop_heuristic_unsatisfied
        self.done = False

    def step(self, scores: np.ndarray, histories: list[list[int]], stop_ids: np.ndarray, last: bool):
        """scores [beams, vocab] processed log-probs → (parent beam [beams], token [beams])."""
        nb, vocab = self.c.num_beams, scores.shape[1]
        total = (scores + self.running_scores[:, None]).reshape(-1)  # [beams × vocab]
        top = np.argpartition(total, -self.candidates)[-self.candidates:]
        top = top[np.lexsort((top, -total[top]))]  # best first; lower index first on ties
        top_scores, parent, token = total[top], top // vocab, top % vocab
        hits = np.isin(token, stop_ids) | last  # [candidates]: this continuation ends
        generated_length = len(histories[0]) + 1 - self.prompt_length

        if not self.done:
            self._add_finished(top_scores, parent, token, hits, histories, generated_length)
        running = np.argsort(-(top_scores + hits * BEAM_MASKED), kind="stable")[:nb]
        self.running_scores = (top_scores + hits * BEAM_MASKED)[running]
        self._update_done(generated_length, hits)
        return parent[running], token[running]

    def _add_finished(self, top_scores, parent, token, hits, histories, generated_length):
        full = len(self.finished) == self.c.num_beams
        if not self.improvable or (full and self.c.early_stopping is True):
            return
        nb = self.c.num_beams
        for k in np.flatnonzero(hits[:nb]):
            ids = histories[parent[k]][self.prompt_length:] + [int(token[k])]
            self.finished.append((float(top_scores[k]) / generated_length ** self.c.length_penalty, ids))
        self.finished.sort(key=lambda f: -f[0])
        del self.finished[nb:]

    def _update_done(self, generated_length: int, hits: np.ndarray) -> None:
        c = self.c
        if c.early_stopping == "never" and c.length_penalty > 0:
            best_length = c.max_new_tokens
        else:
            best_length = generated_length
        full = len(self.finished) == c.num_beams
        if full:
            best_possible = self.running_scores[0] / best_length ** c.length_penalty
            self.improvable = self.improvable and best_possible > self.finished[-1][0]
        self.done = not self.improvable or (full and c.early_stopping is True) or bool(hits.all())

    def best(self, n: int) -> list[tuple[list[int], float]]:
        return [(ids, score) for score, ids in self.finished[:n]]
