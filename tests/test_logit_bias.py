"""`logit_bias` (OpenAI's) and `min_p` (transformers'): each against its definition, in every decoding mode
and through the Python API, the command line and batch rows (the server: tests/test_server.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpt2_onnx import GenerationOptionError
from gpt2_onnx.apps.batch import run_local
from gpt2_onnx.apps.cli import build_parser, main
from gpt2_onnx.apps.option_flags import options_given
from gpt2_onnx.logits import Processors, log_softmax, sampling_candidates
from gpt2_onnx.options import GenerationConfig

PROMPT = "这是很久之前的事情了"
GREEDY = {"do_sample": False, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def gen(tiny_model, generators):
    return generators(tiny_model, "fp32")


def a_token(gen, avoid=()) -> int:
    """An ordinary token (no special, no stop id) that greedy decoding of PROMPT does not choose."""
    greedy = set(gen.generate(PROMPT, **GREEDY).token_ids) | set(avoid)
    specials = set(gen.manifest.conventions.stop_token_ids) | set(gen.manifest.conventions.prompt_prefix_ids)
    return next(t for t in range(200, gen.manifest.architecture.vocab_size) if t not in greedy | specials)


def first_logprobs(gen, **options) -> tuple[float, list[tuple[int, float]]]:
    """The first new token's (log-probability, every token's (id, log-probability) best first)."""
    out = []
    vocab = gen.manifest.architecture.vocab_size
    config = gen.config(max_new_tokens=1, do_sample=False, logprobs=vocab, **options)
    gen.run([gen.request(gen.encode(PROMPT), config, lambda event: out.append(event.logprobs[0]))])
    return out[0]


# --- min_p -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "temperature, top_k, top_p, min_p",
    [
        (1.0, 0, 1.0, 0.05),
        (1.0, 0, 1.0, 0.5),
        (0.7, 0, 1.0, 0.1),
        (1.5, 20, 0.9, 0.1),
        (1.0, 0, 0.8, 0.3),
        (1.0, 0, 1.0, 1.0),
    ],
)
def test_min_p_candidates_equal_transformers_min_p_warper(temperature, top_k, top_p, min_p):
    """transformers' order (generation/utils.py _get_logits_processor): temperature, top-k, top-p, then min-p."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(2)
    for scale in (0.5, 2.0, 6.0):
        row = rng.normal(0, scale, 1000).astype(np.float32)
        s = TemperatureLogitsWarper(temperature)(None, torch.from_numpy(row.copy())[None])
        if top_k:
            s = TopKLogitsWarper(top_k)(None, s)
        if top_p < 1:
            s = TopPLogitsWarper(top_p)(None, s)
        s = MinPLogitsWarper(min_p)(None, s)
        expected = set(np.flatnonzero(np.isfinite(s.numpy()[0])).tolist())
        ids, logits = sampling_candidates(row, top_k, top_p, temperature, min_p)
        assert set(range(1000) if ids is None else ids.tolist()) == expected
        np.testing.assert_allclose(logits, s.numpy()[0][ids], rtol=1e-6)  # min_p > 0: ids is never None


def test_min_p_one_samples_the_greedy_text_and_zero_is_off(gen):
    greedy = gen.generate(PROMPT, **GREEDY)
    for seed in range(3):
        assert (
            gen.generate(PROMPT, **{**GREEDY, "do_sample": True}, top_k=0, min_p=1.0, seed=seed).token_ids
            == greedy.token_ids
        )
    # min_p 0 is off: the same draws as without it
    sampled = dict(GREEDY, do_sample=True, top_k=0, seed=5)
    assert gen.generate(PROMPT, **sampled, min_p=0.0).token_ids == gen.generate(PROMPT, **sampled).token_ids
    with pytest.raises(GenerationOptionError, match=r"^min_p must be in \[0, 1\]") as info:
        gen.generate(PROMPT, min_p=1.5)
    assert info.value.option == "min_p"


# --- logit_bias: its definition ----------------------------------------------------------------


def test_logit_bias_adds_to_the_logits_as_transformers_sequence_bias_does():
    from transformers.generation.logits_process import SequenceBiasLogitsProcessor

    rng = np.random.default_rng(3)
    scores = rng.normal(0, 3, (4, 50)).astype(np.float32)
    bias = {7: 5.5, 3: -100.0, 49: 0.25}
    config = GenerationConfig.from_options({}, {"logit_bias": {str(k): v for k, v in bias.items()}})  # JSON's keys
    assert config.logit_bias == ((3, -100.0), (7, 5.5), (49, 0.25))
    ours = Processors(config, (), ()).bias(scores.copy())
    by_hand = scores.copy()
    by_hand[:, list(bias)] += np.array(list(bias.values()), np.float32)
    theirs = SequenceBiasLogitsProcessor({(k,): v for k, v in bias.items()})(
        torch.zeros((4, 1), dtype=torch.long), torch.from_numpy(scores.copy())
    )
    np.testing.assert_array_equal(ours, by_hand)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "mode",
    [{}, {"do_sample": True, "top_k": 0, "seed": 1}, {"num_beams": 3}, {"prompt_lookup_num_tokens": 3}],
    ids=["greedy", "sampling", "beams", "speculative"],
)
def test_plus_100_chooses_the_token_every_step_and_minus_100_bans_it(gen, mode):
    token = a_token(gen)
    forced = gen.generate(PROMPT, **{**GREEDY, **mode}, logit_bias={token: 100})
    assert forced.token_ids == (token,) * GREEDY["max_new_tokens"]
    plain = gen.generate(PROMPT, **{**GREEDY, **mode})
    banned = gen.generate(PROMPT, **{**GREEDY, **mode}, logit_bias=dict.fromkeys(plain.token_ids, -100))
    assert banned.token_ids and not set(banned.token_ids) & set(plain.token_ids)


def test_logprobs_are_of_the_biased_distribution(gen):
    plain_chosen, plain = first_logprobs(gen)
    token, other = a_token(gen), a_token(gen, avoid=[a_token(gen)])
    bias = {token: 3.0, other: -2.5}
    chosen, biased = first_logprobs(gen, logit_bias=bias)
    raw = np.zeros(len(plain))
    for i, lp in plain:
        raw[i] = lp + bias.get(i, 0.0)
    expected = log_softmax(raw[None])[0]
    got = np.zeros(len(biased))
    for i, lp in biased:
        got[i] = lp
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert chosen == max(lp for _, lp in biased) and chosen != plain_chosen
    _, forced = first_logprobs(gen, logit_bias={token: 100})
    assert forced[0][0] == token and forced[0][1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "bias, message",
    [
        ({10**6: 1}, "logit_bias holds an id ≥ the vocabulary size 1024"),
        ({"1024": 1}, "logit_bias holds an id ≥ the vocabulary size 1024"),
        ({5: 101}, "logit_bias values must be numbers in [-100, 100], got 101 for token id 5"),
        ({5: float("nan")}, "logit_bias values must be numbers in [-100, 100]"),
        ({5: "1"}, "logit_bias values must be numbers in [-100, 100]"),
        ({"abc": 1}, "logit_bias keys must be token ids"),
        ({"-1": 1}, "logit_bias keys must be token ids"),
        ({-1: 1}, "logit_bias keys must be token ids"),
        ({True: 1}, "logit_bias keys must be token ids"),
        ([[5, 1]], "logit_bias must be a map token id → number in [-100, 100]"),
    ],
)
def test_bad_logit_bias_is_refused_naming_it(gen, bias, message):
    with pytest.raises(GenerationOptionError) as info:
        gen.generate(PROMPT, max_new_tokens=2, logit_bias=bias)
    assert info.value.option == "logit_bias" and str(info.value).startswith(message), str(info.value)


# --- the command line and batch rows ------------------------------------------------------------


def test_logit_bias_flag_is_repeated_id_equals_bias(gen, tiny_model, capsys):
    token = a_token(gen)
    args = build_parser().parse_args(["generate", "x", "--logit-bias", f"{token}=100", "--logit-bias", "5=-2.5"])
    assert options_given(args) == {"logit_bias": {token: 100.0, 5: -2.5}}
    flags = ["generate", PROMPT, "--model", str(tiny_model), "--precision", "fp32", "--no-do-sample"]
    assert main([*flags, "--max-new-tokens", "4", "--logit-bias", f"{token}=100"]) == 0
    expected = gen.generate(PROMPT, max_new_tokens=4, do_sample=False, logit_bias={token: 100})
    assert expected.token_ids == (token,) * 4 and capsys.readouterr().out == expected.text + "\n"
    for entry in ("5", "x=1", "5=many"):
        with pytest.raises(SystemExit) as info:
            main([*flags, "--logit-bias", entry])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and "--logit-bias" in err and "expected ID=VALUE" in err
    assert main([*flags, "--logit-bias", "5=200"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt2-onnx: error: logit_bias values must be numbers in [-100, 100]")


def test_batch_rows_take_their_own_logit_bias_and_min_p(gen, tmp_path):
    token = a_token(gen)
    rows = [
        {"id": "plain", "prompt": PROMPT},
        {"id": "forced", "prompt": PROMPT, "logit_bias": {str(token): 100}},
        {"id": "min-p", "prompt": PROMPT, "do_sample": True, "top_k": 0, "min_p": 1.0, "seed": 3},
        {"id": "outside", "prompt": PROMPT, "logit_bias": {"5000": 1}},
        {"id": "too-big", "prompt": PROMPT, "min_p": 2},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = run_local(gen, source, tmp_path / "out.jsonl", GREEDY, progress=False)
    out = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    greedy = gen.generate(PROMPT, **GREEDY)
    assert summary.errors == 2 and "logit_bias" in out["outside"]["error"] and "min_p" in out["too-big"]["error"]
    assert out["plain"]["token_ids"] == list(greedy.token_ids) == out["min-p"]["token_ids"]
    assert out["forced"]["token_ids"] == [token] * GREEDY["max_new_tokens"]
