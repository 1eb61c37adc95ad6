"""A row's result never depends on the other rows of its batch, and a batch's KV cache holds
what its rows' tokens need, not rows × the longest row."""

from __future__ import annotations

import ctypes
import mmap
import random

import numpy as np
import pytest

from gpt2_onnx.session import Decoder, KVBuffer, lone_row_is_exact

CHARS = (
    "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家"
    "可下而过天去能对小多然于心学么之都好看起发"
)


def mixed_prompts(count: int, seed: int = 0, longest: int = 40) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(CHARS) for _ in range(rng.randint(1, longest))) for _ in range(count)]


@pytest.mark.parametrize("precision", ["int8", "fp32", "int4"])
def test_greedy_rows_equal_alone_full_size(full_model, generators, precision):
    gen = generators(full_model, precision)
    prompts = mixed_prompts(16)
    batch = gen.generate(prompts, max_new_tokens=24, do_sample=False, stop_token_ids=[])
    alone = [gen.generate(p, max_new_tokens=24, do_sample=False, stop_token_ids=[]) for p in prompts]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    assert len({r.token_ids for r in batch}) == 16  # varied rows, so equality says something


def test_two_prompt_batch_of_the_issue(full_model, generators):
    gen = generators(full_model, "int8")
    together = gen.generate(["北京", "上海"], max_new_tokens=32, do_sample=False)
    assert together[0].token_ids == gen.generate("北京", max_new_tokens=32, do_sample=False).token_ids


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_beam_rows_equal_alone_full_size(full_model, generators, precision):
    gen = generators(full_model, precision)
    prompts = mixed_prompts(16, seed=1)
    options = dict(max_new_tokens=12, do_sample=False, num_beams=3, num_return_sequences=2, stop_token_ids=[])
    batch = gen.generate(prompts, **options)
    alone = [gen.generate(p, **options) for p in prompts]
    assert [[r.token_ids for r in group] for group in batch] == [[r.token_ids for r in group] for group in alone]


def test_int8_logits_of_a_row_are_bit_identical_in_any_batch(full_model, generators):
    decoder = generators(full_model, "int8").decoder
    rows = [[101] + list(range(2000, 2000 + n)) for n in (3, 17, 9)]
    _, together = decoder.prefill(rows, 32)
    for r, row in enumerate(rows):
        _, alone = decoder.prefill([row], 32)
        np.testing.assert_array_equal(together[r], alone[0])


def test_int4_rows_agree_with_alone(full_model, generators):
    """On some CPUs MatMulNBits multiplies one row with another kernel than several, which
    quantizes the activations otherwise: there INT4 calls run at least two rows, so a row alone
    gets what it gets in a batch, up to float rounding. Where the probe at load finds the lone
    row exact (an AMD EPYC), a lone row runs alone, and its logits are the batch's bit for bit."""
    decoder = generators(full_model, "int4").decoder
    exact = lone_row_is_exact(decoder)
    assert decoder.min_rows == (1 if exact else 2)
    rows = [[101] + list(range(3000, 3000 + n)) for n in (4, 4, 4)]
    cache, together = decoder.prefill(rows, 32)
    stepped = decoder.step(cache, np.array([5000, 5001, 5002]))
    atol = 0 if exact else 1e-4  # float rounding: blocks summed in another order
    for r, row in enumerate(rows):
        alone_cache, alone = decoder.prefill([row], 32)
        np.testing.assert_allclose(together[r], alone[0], rtol=0, atol=atol)
        np.testing.assert_allclose(stepped[r], decoder.step(alone_cache, np.array([5000 + r]))[0], rtol=0, atol=atol)


def resident_bytes(array: np.ndarray) -> int:
    """Bytes of the pages under `array` that are in memory now (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    start = array.ctypes.data // mmap.PAGESIZE * mmap.PAGESIZE
    length = array.ctypes.data + array.nbytes - start
    pages = (ctypes.c_ubyte * (-(-length // mmap.PAGESIZE)))()
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), pages) == 0, ctypes.get_errno()
    return sum(p & 1 for p in pages) * mmap.PAGESIZE


def test_mixed_length_beams_hold_only_what_their_rows_need(full_model, generators, monkeypatch):
    """7 short prompts and one of 881 tokens, 4 beams: the cache holds the rows' own tokens
    (rounded up to pages), not 32 rows × the long row's length."""
    gen = generators(full_model, "int8")
    caches: list[KVBuffer] = []
    peaks: list[tuple[int, int]] = []  # (resident bytes, bytes the rows' lengths need)
    original_empty, original_run = Decoder.empty, Decoder.run

    def empty(self, *args, **kwargs):
        caches.append(original_empty(self, *args, **kwargs))
        return caches[-1]

    def run(self, cache, first, ids, **kwargs):
        a = self.architecture
        per_head = -(-cache.lengths * a.head_dim * 4 // mmap.PAGESIZE) * mmap.PAGESIZE  # [rows] bytes per head
        needed = int(per_head.sum()) * a.n_head * 2 * a.n_layer
        peaks.append((sum(resident_bytes(b) for b in cache.full), needed))
        return original_run(self, cache, first, ids, **kwargs)

    monkeypatch.setattr(Decoder, "empty", empty)
    monkeypatch.setattr(Decoder, "run", run)
    prompts = mixed_prompts(7, seed=2, longest=12) + ["这是很久之前的事情了" * 88]
    results = gen.generate(prompts, max_new_tokens=20, do_sample=False, num_beams=4, stop_token_ids=[])
    assert len(results) == 8 and len(caches) == 1
    resident, needed = max(peaks)
    a = gen.manifest.architecture
    padded = 32 * (881 + 20) * a.kv_bytes_per_token  # every row as long as the longest: what batching cost before
    assert resident <= needed * 1.02 + (1 << 20), (resident, needed)
    assert resident < padded / 5, (resident, padded)


def test_the_lone_row_probe_compares_every_row_of_a_pair(tiny_int4, generators, monkeypatch):
    """A pair whose second row differs from that row alone is not exact, though its first row agrees (the probe
    looked at the first only): a one-row call's logits must be what the row gets in any place of a batch."""
    decoder = generators(tiny_int4, "int4").decoder
    original = Decoder.run

    def second_row_off(self, cache, first, ids, every_position=False):
        logits = original(self, cache, first, ids, every_position)
        if ids.shape == (2, 1):  # a one-token call of two rows: its second row a kernel's rounding away
            logits[1] += 1e-3
        return logits

    if not lone_row_is_exact(decoder):
        pytest.skip("a lone row differs on this CPU anyway: the second row decides nothing here")
    monkeypatch.setattr(Decoder, "run", second_row_off)
    assert not lone_row_is_exact(decoder)
