"""Rows moving in the KV cache: `KVBuffer.select` copies every row from its source whatever the
order of moves, and `plan.settle` lays the requests that go on out contiguously, moving as few
rows as possible."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from gpt2_onnx import plan as planning
from gpt2_onnx.session import KVBuffer


def _buffer(rows: int, rng: np.random.Generator) -> KVBuffer:
    full = [rng.standard_normal((rows, 2, 16, 4)).astype(np.float32) for _ in range(3)]
    return KVBuffer(full, [mmap.mmap(-1, 4) for _ in full], rng.integers(1, 17, rows))


@pytest.mark.parametrize("seed", range(40))
def test_select_copies_each_row_from_its_source(seed):
    """Rows leave (the rest shift down), rows are permuted (cycles need staging), rows repeat
    (beams): afterwards every row holds its source's filled positions and length."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    cache = _buffer(n, rng)
    before, lengths = [b.copy() for b in cache.full], cache.lengths.copy()
    kind = seed % 3
    if kind == 0:
        rows = np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
    elif kind == 1:
        rows = rng.permutation(n)
    else:
        rows = rng.integers(0, n, int(rng.integers(1, n + 1)))
    cache.select(rows)
    assert list(cache.lengths) == list(lengths[rows])
    for b, old in zip(cache.full, before):
        for dst, src in enumerate(rows):
            np.testing.assert_array_equal(b[dst, :, : lengths[src]], old[src, :, : lengths[src]])


def _laid_out(sources: list[list[int]], order: list[int]) -> list[int]:
    assert sorted(order) == list(range(len(sources)))  # every request once
    return [r for i in order for r in sources[i]]


def _moved(rows: list[int]) -> int:
    return sum(dst != src for dst, src in enumerate(rows))


def test_a_request_leaving_moves_one_row_not_every_row_after_it():
    """32 one-row requests, the third leaves: the last takes its row (one copy; shifting every
    row after it down copies 29)."""
    sources = [[r] for r in range(32) if r != 2]
    rows = _laid_out(sources, planning.settle(sources))
    assert _moved(rows) == 1 and rows[2] == 31
    assert _moved([r for s in sources for r in s]) == 29


def test_requests_in_place_stay_and_the_others_fill_the_gaps():
    sources = [[0, 1], [4], [5, 6], [8]]  # rows 2, 3 and 7 left; 6 rows go on
    rows = _laid_out(sources, planning.settle(sources))
    assert rows == [0, 1, 5, 6, 4, 8]  # [0, 1] and [4] stay; [5, 6] fills 2-3, [8] fills 5
    assert _moved(rows) == 3 < _moved([0, 1, 4, 5, 6, 8])


def test_when_the_gaps_do_not_fit_every_request_keeps_its_order():
    sources = [[1], [4], [2, 3]]
    assert _laid_out(sources, planning.settle(sources)) == [4, 1, 2, 3]
    sources = [[0], [2, 3], [5, 6]]  # gaps of one row each for a request of two
    assert planning.settle(sources) == [0, 1, 2]


def test_beams_that_repeat_rows_move_whole():
    sources = [[0], [3, 3, 4]]
    rows = _laid_out(sources, planning.settle(sources))
    assert rows[0] == 0 and sorted(rows[1:]) == [3, 3, 4]
