"""Prompt-lookup speculative decoding: the same output as without it, and the same distribution."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_onnx import GenerationOptionError
from gpt2_onnx.options import GenerationConfig
from gpt2_onnx.speculative import Speculation, prompt_lookup, verify_sample

PASSAGE = "这是很久之前的事情了，我们去公园散步吧。今天天气晴朗，北京的春天来了。" * 4


def test_prompt_lookup_proposes_what_followed_the_first_earlier_occurrence():
    ids = [1, 2, 3, 4, 5, 9, 2, 3, 7, 2, 3]
    assert prompt_lookup(ids, 2, 3) == [4, 5, 9]  # "2 3" first occurred at 1; what followed it
    assert prompt_lookup(ids, 2, 10) == [4, 5, 9, 2, 3, 7, 2, 3]
    assert prompt_lookup([1, 2, 3, 8, 3], 2, 2) == [8, 3]  # no earlier "8 3": falls back to the 1-gram "3"
    assert prompt_lookup([1, 2, 3, 4], 2, 3) == []


@pytest.fixture
def accepted(monkeypatch):
    """Totals of proposed and accepted tokens over a test."""
    totals = {"proposed": 0, "accepted": 0}
    original = Speculation.update

    def update(self, proposed, accepted):
        totals["proposed"] += proposed
        totals["accepted"] += accepted
        original(self, proposed, accepted)

    monkeypatch.setattr(Speculation, "update", update)
    return totals


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(repetition_penalty=1.3),
        dict(no_repeat_ngram_size=4),
        dict(min_new_tokens=40, stop_token_ids=[102]),
        dict(bad_words=["公园"]),
        dict(stop=["春天"]),
        dict(presence_penalty=0.5, frequency_penalty=0.3),
    ],
)
def test_greedy_output_is_identical_full_size(full_model, generators, accepted, options):
    gen = generators(full_model, "int8")
    plain = gen.generate(PASSAGE, max_new_tokens=60, do_sample=False, **options)
    fast = gen.generate(PASSAGE, max_new_tokens=60, do_sample=False, prompt_lookup_num_tokens=6, **options)
    assert (fast.token_ids, fast.text, fast.finish_reason) == (plain.token_ids, plain.text, plain.finish_reason)
    streamed = "".join(gen.stream(PASSAGE, max_new_tokens=60, do_sample=False, prompt_lookup_num_tokens=6, **options))
    assert streamed == plain.text
    # proposals were verified, not skipped (a repetition penalty keeps the random model off every token
    # it has seen, so no n-gram recurs and nothing is proposed)
    assert accepted["proposed"] > 0 or "repetition_penalty" in options


def test_a_batch_and_long_form_with_speculation(tiny_model, generators, accepted):
    """Rows decode together without proposals, then the last one speculates alone, sliding past
    the tiny model's 128 positions: every row's tokens are those it gets without speculation."""
    gen = generators(tiny_model, "int8")
    jobs = [(PASSAGE[:40], 200), ("今天", 30), (PASSAGE[:25], 60)]
    tokens = {i: [] for i in range(len(jobs))}
    requests = [
        gen.request(
            gen.codec.encode(prompt),
            gen.config(
                max_new_tokens=n,
                do_sample=False,
                stop_token_ids=[],
                context_overflow="slide",
                prompt_lookup_num_tokens=4,
            ),
            lambda event, i=i: tokens[i].extend(event.tokens),
        )
        for i, (prompt, n) in enumerate(jobs)
    ]
    gen.run(requests)
    plain = [
        gen.generate(p, max_new_tokens=n, do_sample=False, stop_token_ids=[], context_overflow="slide").token_ids
        for p, n in jobs
    ]
    assert [tuple(tokens[i]) for i in range(len(jobs))] == plain
    assert accepted["proposed"] > 0  # the row left alone speculated


def test_long_proposals_fp32_full_size(full_model, generators, accepted):
    """FP32 too: proposals of up to 8 tokens, verified in one pass, leave the output as it was."""
    gen = generators(full_model, "fp32")
    ids = gen.codec.encode(PASSAGE)
    plain = gen.generate_ids(ids, max_new_tokens=40, do_sample=False, stop_token_ids=[]).token_ids
    assert (
        gen.generate_ids(
            ids, max_new_tokens=40, do_sample=False, stop_token_ids=[], prompt_lookup_num_tokens=8
        ).token_ids
        == plain
    )
    assert accepted["proposed"] > 0  # proposals were verified, not skipped


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8)])
def test_verify_sample_keeps_the_distribution(temperature, top_k, top_p):
    """Whatever the proposal, the token drawn follows the warped distribution p exactly."""
    logits = np.log(np.array([0.4, 0.25, 0.2, 0.1, 0.05], np.float32))
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    expected = np.exp(logits / temperature)
    expected /= expected.sum()
    if top_k:
        expected[top_k:] = 0
    if top_p < 1:
        keep = np.cumsum(expected / expected.sum()) - expected / expected.sum() < top_p
        expected[~keep] = 0
    expected /= expected.sum()
    rng = np.random.default_rng(0)
    for proposal in (0, 2, 4):
        draws = np.array([verify_sample(logits.copy(), config, rng, proposal) for _ in range(20000)])
        np.testing.assert_allclose(np.bincount(draws, minlength=5) / len(draws), expected, atol=0.012)


def test_speculation_adapts_and_pauses():
    s = Speculation(k=8, max_ngram=2)
    s.update(8, 0)
    assert s.length == 7
    for _ in range(3):
        s.update(s.length, 0)
    assert s.paused > 0 and s.propose([1, 2, 1, 2], 10, ()) == []  # paused: no proposals, no cost
    s.paused = 0
    s.length = 3
    s.update(3, 3)
    assert s.length == 5  # all accepted: longer proposals


def test_speculation_refuses_what_it_cannot_keep_exact(full_model, generators):
    with pytest.raises(GenerationOptionError, match="num_return_sequences"):
        generators(full_model, "int8").generate("x", do_sample=True, num_return_sequences=2, prompt_lookup_num_tokens=4)
    with pytest.raises(GenerationOptionError, match="int4 is not"):
        generators(full_model, "int4").generate("x", prompt_lookup_num_tokens=4)
