"""Beam search for one prompt: transformers' vectorised beam search, step by step.

Each step takes the processed log-probabilities of the prompt's `num_beams` rows and
returns, per row, the parent row it continues and its next token; finished hypotheses
are kept by transformers' rules (length penalty, early stopping, candidate count).
"""

from __future__ import annotations

import numpy as np

from .options import GenerationConfig

BEAM_MASKED = -1.0e9  # transformers' score for excluded beam candidates


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
        top = np.argpartition(total, -self.candidates)[-self.candidates :]
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
            ids = histories[parent[k]][self.prompt_length :] + [int(token[k])]
            self.finished.append((float(top_scores[k]) / generated_length**self.c.length_penalty, ids))
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
            best_possible = self.running_scores[0] / best_length**c.length_penalty
            self.improvable = self.improvable and best_possible > self.finished[-1][0]
        self.done = not self.improvable or (full and c.early_stopping is True) or bool(hits.all())

    def best(self, n: int) -> list[tuple[list[int], float]]:
        return [(ids, score) for score, ids in self.finished[:n]]
