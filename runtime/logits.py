"""Logits processors and token selection: pure numpy, the semantics of transformers'.

Order, as in transformers: logit bias (`Processors.bias`, OpenAI's logit_bias: first, as transformers'
SequenceBiasLogitsProcessor), a constraint's mask (`constrain`, as vLLM's guided decoding: before the
penalties and sampling, so temperature, top-k, top-p and min-p choose among allowed tokens), repetition
penalty, no-repeat n-grams, bad words, min new tokens (OpenAI's presence and frequency penalties, over the
generated tokens, come with the repetition penalty); then, when sampling, temperature, top-k, top-p, min-p.
`scores` is `[rows, vocab]` (the last position's logits of each row) and is modified in place. Every function
touches one row of the vocabulary at most once per step; the rest works on the few
ids a row's history names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .options import GenerationConfig

NEG_INF = -np.inf
TOP_P_CANDIDATES = 256  # top-p without top-k first looks at this many best tokens


@dataclass(frozen=True)
class Processors:
    """The per-call settings the processors need, resolved to token ids."""

    config: GenerationConfig
    stop_token_ids: tuple[int, ...]
    bad_words_ids: tuple[tuple[int, ...], ...]

    @cached_property
    def stop_ids(self) -> np.ndarray:
        """`stop_token_ids` as an index array [n], made once (constraints and beams read it every step)."""
        return np.array(self.stop_token_ids, np.int64)

    def bias(self, logits: np.ndarray) -> np.ndarray:
        """OpenAI's logit_bias: each bias added to its token's logit, in every row, in place. The caller
        applies it to the model's logits before anything else, so it moves the token chosen by greedy
        decoding, sampling and beams alike (beams score the log-softmax of the biased logits), and
        logprobs are those of the biased distribution, as OpenAI's are."""
        if self.config.logit_bias:
            ids, biases = zip(*self.config.logit_bias)
            logits[:, list(ids)] += np.asarray(biases, dtype=logits.dtype)
        return logits

    def __call__(self, scores: np.ndarray, histories: Sequence[Sequence[int]], n_new: int) -> np.ndarray:
        """histories[r]: every id of row r so far (prefix, prompt, generated); n_new: generated so far."""
        c = self.config
        openai = c.presence_penalty != 0.0 or c.frequency_penalty != 0.0
        per_row = c.repetition_penalty != 1.0 or c.no_repeat_ngram_size > 0 or self.bad_words_ids or openai
        for row, history in zip(scores, histories) if per_row else ():
            if c.repetition_penalty != 1.0:
                repetition_penalty(row, history, c.repetition_penalty)
            if openai and n_new:
                presence_frequency_penalty(
                    row, history[len(history) - n_new :], c.presence_penalty, c.frequency_penalty
                )
            if c.no_repeat_ngram_size > 0:
                row[banned_ngram_tokens(history, c.no_repeat_ngram_size)] = NEG_INF
            if self.bad_words_ids:
                row[banned_bad_words(history, self.bad_words_ids)] = NEG_INF
        if n_new < c.min_new_tokens and self.stop_token_ids:
            scores[:, list(self.stop_token_ids)] = NEG_INF
        return scores


def constrain(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """A constraint's mask: scores [rows, vocab] of tokens not `allowed` (bool [rows, vocab]) set to -inf, in place."""
    scores[~allowed] = NEG_INF
    return scores


def keep_allowed(scores: np.ndarray, constrained: np.ndarray) -> np.ndarray:
    """Rows the processors left without a finite score (every allowed token banned: min_new_tokens with only a
    stop token allowed, say) take back their `constrained` scores: the constraint wins, never an empty choice."""
    dead = ~np.isfinite(scores).any(axis=-1)
    scores[dead] = constrained[dead]
    return scores


def repetition_penalty(row: np.ndarray, history: Sequence[int], penalty: float) -> None:
    ids = np.unique(np.asarray(history, dtype=np.int64))
    s = row[ids]
    row[ids] = np.where(s < 0, s * penalty, s / penalty)


def presence_frequency_penalty(row: np.ndarray, generated: Sequence[int], presence: float, frequency: float) -> None:
    """OpenAI's penalties: logit -= presence × [count > 0] + frequency × count, over the generated ids."""
    ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    row[ids] -= presence + frequency * counts


def top_logprobs(logits: np.ndarray, tokens: np.ndarray, n: int) -> list[tuple[float, list[tuple[int, float]]]]:
    """Per row: (log-probability of the chosen token, the n most likely (id, log-probability),
    best first), from the model's own distribution (logits before any processor but the logit bias)."""
    logp = log_softmax(logits.astype(np.float64))
    best = np.argsort(-logp, axis=-1, kind="stable")[:, :n]
    return [(float(lp[t]), [(int(i), float(lp[i])) for i in b]) for lp, t, b in zip(logp, tokens, best)]


def banned_ngram_tokens(history: Sequence[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `history`."""
    if len(history) + 1 < n:
        return []
    prefix = tuple(history[len(history) - n + 1 :]) if n > 1 else ()
    return [history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i : i + n - 1]) == prefix]


def banned_bad_words(history: Sequence[int], bad_words: Sequence[tuple[int, ...]]) -> list[int]:
    """Last tokens of bad word sequences whose other tokens end `history`."""
    banned = []
    for word in bad_words:
        k = len(word) - 1
        if k == 0 or (len(history) >= k and tuple(history[len(history) - k :]) == word[:-1]):
            banned.append(word[-1])
    return banned


def greedy(scores: np.ndarray) -> np.ndarray:
    """[rows, vocab] → [rows] ids of the highest score (first on ties, as torch.argmax)."""
    return scores.argmax(axis=-1)


def sample(scores: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> np.ndarray:
    """Temperature, top-k, top-p, min-p, then a draw from the renormalised probabilities, per row."""
    return np.array([_sample_row(row, config, rng) for row in scores], dtype=np.int64)


def sampling_candidates(
    row: np.ndarray, top_k: int, top_p: float, temperature: float = 1.0, min_p: float = 0.0
) -> tuple[np.ndarray | None, np.ndarray]:
    """(ids left to sample from, unordered, or None for every id; their logits / temperature).

    Top-k is taken on the raw logits: a positive temperature does not change which k are
    best, so the common path divides only the k survivors and touches the vocabulary once."""
    ids = _top_k_ids(row, top_k)
    logits = (row if ids is None else row[ids]) / temperature
    if top_p < 1.0:
        ids, logits = _narrow(ids, logits, _top_p_keep(logits, top_p))
    if min_p > 0.0:
        ids, logits = _narrow(ids, logits, _min_p_keep(logits, min_p))
    return ids, logits


def _narrow(ids: np.ndarray | None, logits: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The candidates at positions `keep` of `logits` (ids: None for the whole vocabulary)."""
    return (keep if ids is None else ids[keep]), logits[keep]


def _sample_row(row: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    return draw(*candidate_probs(row, config), rng)


def candidate_probs(row: np.ndarray, config: GenerationConfig, dtype=None) -> tuple[np.ndarray | None, np.ndarray]:
    """(candidate ids, or None for the whole vocabulary; their unnormalised probabilities) of
    processed logits [vocab] after temperature, top-k, top-p and min-p."""
    ids, logits = sampling_candidates(row, config.top_k, config.top_p, config.temperature, config.min_p)
    finite = np.isfinite(logits)
    return ids, np.exp(logits - logits[finite].max(), where=finite, out=np.zeros_like(logits, dtype=dtype))


def draw(ids: np.ndarray | None, probs: np.ndarray, rng: np.random.Generator) -> int:
    """One id drawn in proportion to `probs` (as `candidate_probs` gives them)."""
    choice = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
    choice = min(choice, len(probs) - 1)
    return int(choice if ids is None else ids[choice])


def _top_k_ids(row: np.ndarray, k: int) -> np.ndarray | None:
    """Ids scoring at least the k-th best score (ties kept, as transformers)."""
    if k <= 0 or k >= row.size:
        return None
    kth = np.partition(row, row.size - k)[row.size - k]
    return np.flatnonzero(row >= kth)


def _top_p_keep(logits: np.ndarray, top_p: float) -> np.ndarray:
    """transformers' rule: keep an entry while the probability of the entries strictly better
    than it is below top_p (at least one is kept). Only the best `TOP_P_CANDIDATES` are
    sorted unless their mass falls short of top_p."""
    candidates = np.arange(logits.size)
    if logits.size > TOP_P_CANDIDATES:
        best = np.argpartition(logits, -TOP_P_CANDIDATES)[-TOP_P_CANDIDATES:]
        if _log_sum_exp(logits[best]) - _log_sum_exp(logits) >= np.log(top_p):
            candidates = best  # every entry outside `best` has ≥ top_p better mass
    order = candidates[np.argsort(-logits[candidates], kind="stable")]  # best first
    probs = np.exp(logits[order].astype(np.float64) - _log_sum_exp(logits))
    keep = np.cumsum(probs) - probs < top_p
    keep[0] = True
    return order[keep]


def _min_p_keep(logits: np.ndarray, min_p: float) -> np.ndarray:
    """transformers' rule: keep the entries whose probability is at least min_p × the best one's, i.e.
    whose logit is at least the best logit + log(min_p) (the normalisation cancels; the best is kept)."""
    return np.flatnonzero(logits >= logits.max() + np.log(min_p))


def _log_sum_exp(x: np.ndarray) -> float:
    finite = x[np.isfinite(x)]
    m = finite.max()
    return float(m + np.log(np.exp(finite - m).sum()))


def log_softmax(scores: np.ndarray) -> np.ndarray:
    m = scores.max(axis=-1, keepdims=True)
    shifted = scores - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
