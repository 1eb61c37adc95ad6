"""One admitted request's rows: choosing their next tokens, and telling the caller.

Greedy and sampling rows are the request's returned sequences (each leaves when it ends);
beam search keeps `num_beams` rows and reports its best hypotheses when it is done; a
one-row request may verify proposed tokens (`speculative`) in the same pass. Every row's
token comes from the same processors over the same history as if it ran alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .beams import BeamGroup
from .grammar import RowMatcher
from .logits import constrain, greedy, keep_allowed, log_softmax, sample, top_logprobs
from .requests import FINISH_LENGTH, FINISH_STOP, FINISH_STOP_STRING, Event, Request
from .speculative import Speculation, verify_sample
from .text import TextCodec, TextStream


@dataclass(eq=False)
class Active:
    """An admitted request: its rows' histories, and where it stands."""

    request: Request
    reserved: int  # KV positions reserved for it
    computed: int = 0  # positions each of its rows holds in the cache (prompt tokens, while prefilling)
    first: int = 0  # its rows are [first, first + width) of the cache (the engine lays them out)
    width: int = 1
    histories: list[list[int]] = field(default_factory=list)  # every id of each row so far
    slots: list[int] = field(default_factory=list)  # returned sequence of each row (greedy, sampling)
    streams: list[TextStream] = field(default_factory=list)  # per slot
    beams: BeamGroup | None = None
    new_tokens: int = 0
    next_tokens: list[int] = field(default_factory=list)  # what each row feeds at the next decode call
    speculation: Speculation | None = None  # prompt lookup (one-row requests)
    matchers: list[RowMatcher] = field(default_factory=list)  # per slot, with a constraint

    @property
    def span(self) -> range:
        """Its rows of the cache."""
        return range(self.first, self.first + self.width)

    def advance(self, logits: np.ndarray, rows: list[int], codec: TextCodec) -> list[int]:
        """Choose each row's next token from logits [rows, vocab]; returns the cache rows that go
        on (their sources, in order)."""
        if self.new_tokens == 0:  # just prefilled: one row becomes the request's rows
            self.histories = self.histories * self.request.rows
            rows, logits = rows * self.request.rows, np.repeat(logits, self.request.rows, axis=0)
            if self.request.config.num_beams > 1:
                stops = len(self.request.processors.stop_token_ids)
                self.beams = BeamGroup(self.request.config, len(self.request.prompt_ids), stops)
            else:
                self.slots = list(range(self.request.rows))
                self.streams = [TextStream(codec, self.request.config.stop) for _ in self.slots]
                if self.request.grammar is not None:
                    self.matchers = [self.request.grammar.matcher() for _ in self.slots]
                c = self.request.config
                if c.prompt_lookup_num_tokens:
                    self.speculation = Speculation(c.prompt_lookup_num_tokens, c.max_matching_ngram_size)
        step = self.new_tokens
        self.new_tokens += 1
        if self.beams is not None:
            return self._advance_beams(logits, rows, step, codec)
        return self._advance_sequences(logits, rows, step)

    def _choose(
        self, logits: np.ndarray, histories: list[list[int]], slots: list[int], step: int, proposal: int | None = None
    ):
        """(tokens [rows], their logprobs or Nones) for logits [rows, vocab] of sequences `slots`, as a plain
        step chooses them; with a proposal (one row, sampling), by the speculative sampling rule. A constraint
        masks the biased logits; logprobs are of the distribution before the mask (the model's, as vLLM's)."""
        request, c = self.request, self.request.config
        request.processors.bias(logits)  # the model's logits as the caller biased them: logprobs are of those
        raw = logits.copy() if c.logprobs else None  # processors change `logits` in place
        if self.matchers:
            stop_ids = request.processors.stop_ids
            constrained = constrain(logits, np.stack([self.matchers[s].allowed(stop_ids) for s in slots])).copy()
        scores = request.processors(logits, histories, step)
        if self.matchers:
            keep_allowed(scores, constrained)
        if proposal is not None and c.sampling:
            tokens = np.array([verify_sample(scores[0], c, request.rng, proposal)])
        else:
            tokens = sample(scores, c, request.rng) if c.sampling else greedy(scores)
        request.clock.mark()
        return tokens, top_logprobs(raw, tokens, c.logprobs) if c.logprobs else [None] * len(tokens)

    def _advance_sequences(self, logits: np.ndarray, rows: list[int], step: int) -> list[int]:
        tokens, logprobs = self._choose(logits, self.histories, self.slots, step)
        kept, histories, slots, next_tokens = [], [], [], []
        for r, (slot, token) in enumerate(zip(self.slots, tokens.tolist())):
            if self._emit(slot, token, step, logprobs[r]) is None:
                kept.append(rows[r])
                histories.append(self.histories[r] + [token])
                slots.append(slot)
                next_tokens.append(token)
        self.histories, self.slots, self.next_tokens = histories, slots, next_tokens
        return kept

    def verify(self, logits: np.ndarray, proposal: list[int]) -> int | None:
        """A one-row request's pass over [pending, *proposal]: logits [len(proposal) + 1, vocab].
        Each position's token is chosen as a plain step would choose it; proposals are kept
        while they agree. Returns how many were kept (the row's cache keeps their positions),
        or None when the sequence ended."""
        history = self.histories[0]
        for j, position in enumerate(logits):
            step = self.new_tokens
            self.new_tokens += 1
            tokens, logprobs = self._choose(
                position[None], [history], self.slots[:1], step, proposal[j] if j < len(proposal) else None
            )
            token = int(tokens[0])
            history = history + [token]
            if self._emit(self.slots[0], token, step, logprobs[0]) is not None:
                return None
            if j == len(proposal) or token != proposal[j]:
                break
        accepted = j  # proposals kept: the cache already holds them after the pending token
        self.speculation.update(len(proposal), accepted)
        self.histories, self.next_tokens = [history], [token]
        return accepted

    def _emit(self, slot: int, token: int, step: int, logprob) -> str | None:
        """Send one chosen token of a sequence to the caller; its finish reason, if it ends there."""
        request = self.request
        text, hit_stop_string = self.streams[slot].push(token)
        reason = (
            FINISH_STOP
            if token in request.processors.stop_token_ids
            else FINISH_STOP_STRING
            if hit_stop_string
            else None
        )
        if self.matchers:
            reason = self._constrained_reason(self.matchers[slot], token, reason)
        if reason is None and step + 1 == request.config.max_new_tokens:
            reason = FINISH_LENGTH
        if reason in (FINISH_STOP, FINISH_LENGTH):
            text += self.streams[slot].finish()
        request.on_event(Event(slot, (token,), text, reason, None if logprob is None else (logprob,)))
        return reason

    @staticmethod
    def _constrained_reason(matcher: RowMatcher, token: int, reason: str | None) -> str | None:
        """The finish reason with a constraint: a stop token ends a complete text ("stop") or a dead end (a
        valid prefix: "length"); a token after which nothing may follow ends the text at once."""
        if reason == FINISH_STOP:
            return FINISH_LENGTH if matcher.dead else FINISH_STOP
        matcher.consume(token)
        if reason is None and matcher.done:
            return FINISH_STOP if matcher.complete else FINISH_LENGTH
        return reason

    def _advance_beams(self, logits: np.ndarray, rows: list[int], step: int, codec: TextCodec) -> list[int]:
        request, c = self.request, self.request.config
        logits = request.processors.bias(logits)  # beams score the log-softmax of the biased logits
        scores = request.processors(log_softmax(logits), self.histories, step)  # [beams, vocab]
        stop_ids = request.processors.stop_ids
        parents, tokens = self.beams.step(scores, self.histories, stop_ids, step + 1 == c.max_new_tokens)
        request.clock.mark()
        if self.beams.done:
            stop_set = set(request.processors.stop_token_ids)
            for j, (ids, _) in enumerate(self.beams.best(c.num_return_sequences)):
                reason = FINISH_STOP if ids and ids[-1] in stop_set else FINISH_LENGTH
                request.on_event(Event(j, tuple(ids), codec.decode(ids), reason))
            return []
        self.histories = [self.histories[p] + [int(t)] for p, t in zip(parents, tokens)]
        self.next_tokens = [int(t) for t in tokens]
        return [rows[p] for p in parents]
