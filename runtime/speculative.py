"""Prompt-lookup speculative decoding: propose the tokens that followed the latest n-gram
where it occurred before, verify them all in one pass, keep what the model agrees with.

    ids … [a b c] x y z … [a b c]  ─propose─> x y z      (transformers' prompt_lookup_num_tokens)
    one pass over [pending, x, y, z] ─> logits at 4 positions
    position j: the token the model chooses there (greedy: argmax; sampling: see below);
    accept while it equals the proposal; the first disagreement (or the bonus after all
    proposals) is the model's own next token.

Greedy output is identical to decoding one token at a time: every position's token is
chosen from the logits of the same history, after the same processors. (Up to float
rounding: onnxruntime's GroupQueryAttention computes a several-token pass in another order
than one-token passes, ~1e-6, so a near-tie in the logits can go the other way.) With
sampling, a proposal x (a draft that is certain of x) is accepted with probability p(x)
and otherwise a token is drawn from p without x, renormalised: the distribution of the
output is exactly p (speculative sampling with a one-point draft).

A pass over k + 1 tokens costs more than over 1 (about 1.15-1.2× for k = 4 here), so each
row adapts (`Speculation`): its proposal length grows while proposals are accepted and
shrinks when they are not, and after a run of misses it stops proposing for a while.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .logits import candidate_probs, draw
from .options import GenerationConfig

MISSES_BEFORE_PAUSE = 4  # verifications in a row with nothing accepted
PAUSE_TOKENS = 16  # then this many tokens are decoded without proposals


def prompt_lookup(ids: Sequence[int], max_ngram: int, k: int) -> list[int]:
    """Up to k tokens that followed the first earlier occurrence of the longest n-gram
    (n ≤ max_ngram) ending `ids`; [] when none occurs."""
    array = np.asarray(ids, dtype=np.int64)
    # an earlier n-gram equal to the last one ends where the last token occurs before: narrow
    # to those positions, then compare one token further back per n (a step costs µs, not a scan
    # of every window)
    ends = np.flatnonzero(array[:-1] == array[-1])  # [candidates], each < len - 1
    for n in range(min(max_ngram, len(array) - 1), 0, -1):
        candidates = ends[ends >= n - 1]
        for back in range(1, n):
            candidates = candidates[array[candidates - back] == array[-1 - back]]
        if len(candidates):
            return array[candidates[0] + 1 : candidates[0] + 1 + k].tolist()
    return []


@dataclass
class Speculation:
    """One row's proposal length, adapted to how many of its proposals are accepted."""

    k: int  # prompt_lookup_num_tokens: the most tokens proposed at once
    max_ngram: int
    length: int = 0  # tokens to propose now
    misses: int = 0
    paused: int = 0  # tokens left before proposing again

    def __post_init__(self):
        self.length = self.length or self.k

    def propose(self, ids: Sequence[int], room: int, stop_ids: Sequence[int]) -> list[int]:
        """At most `room` tokens, none past a stop id."""
        if self.paused:
            self.paused -= 1
            return []
        proposal = prompt_lookup(ids, self.max_ngram, min(self.length, room))
        for i, token in enumerate(proposal):
            if token in stop_ids:
                return proposal[:i]
        return proposal

    def update(self, proposed: int, accepted: int) -> None:
        if accepted == proposed:
            self.length, self.misses = min(self.k, self.length + 2), 0
        else:
            self.length = max(1, self.length - 1)
            self.misses = self.misses + 1 if accepted == 0 else 0
            if self.misses >= MISSES_BEFORE_PAUSE:
                self.paused, self.misses, self.length = PAUSE_TOKENS, 0, self.k


def verify_sample(scores: np.ndarray, config: GenerationConfig, rng: np.random.Generator, proposal: int) -> int:
    """Speculative sampling with a one-point draft: `proposal` with probability p(proposal),
    else a draw from p without it; `scores` [vocab] are the processed logits."""
    ids, probs = candidate_probs(scores, config, np.float64)
    probs /= probs.sum()
    where = np.flatnonzero((ids if ids is not None else np.arange(len(probs))) == proposal)
    p = float(probs[where[0]]) if len(where) else 0.0
    if rng.random() < p:
        return proposal
    if len(where):
        probs[where[0]] = 0.0
    return draw(ids, probs, rng)
