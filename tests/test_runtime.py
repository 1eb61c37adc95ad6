"""Runtime behaviour: sampling, streaming, stop strings, text rules, options, context, threads."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from gpt2_onnx import ContextLengthError, GenerationOptionError, Generator
from gpt2_onnx.logits import Processors, sampling_candidates
from gpt2_onnx.options import MAX_ROWS, GenerationConfig

PROMPT = "这是很久之前的事情了"


def test_runtime_never_imports_torch(tiny_model):
    code = f"""
import sys
from gpt2_onnx import Generator
g = Generator.load({str(tiny_model)!r}, precision="int8")
g.generate("这是", max_new_tokens=5)
g.generate(["这是", "今天天气"], max_new_tokens=5, num_beams=2, do_sample=False)
"".join(g.stream("这是", max_new_tokens=5))
heavy = sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum", "onnx") or m == "gpt2_onnx.export"
)
print(heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_seeded_sampling_is_reproducible(tiny_model, generators):
    gen = generators(tiny_model)
    a = gen.generate(PROMPT, max_new_tokens=30, do_sample=True, seed=7)
    b = gen.generate(PROMPT, max_new_tokens=30, do_sample=True, seed=7)
    c = gen.generate(PROMPT, max_new_tokens=30, do_sample=True, seed=8)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids


def test_top_k_1_sampling_equals_greedy(tiny_model, generators):
    gen = generators(tiny_model)
    greedy = gen.generate(PROMPT, max_new_tokens=30, do_sample=False)
    for seed in range(3):
        assert gen.generate(PROMPT, max_new_tokens=30, do_sample=True, top_k=1, seed=seed).token_ids == greedy.token_ids
    assert gen.generate(PROMPT, max_new_tokens=30, do_sample=True, temperature=0).token_ids == greedy.token_ids


def test_num_return_sequences_sampling(tiny_model, generators):
    gen = generators(tiny_model)
    results = gen.generate(PROMPT, max_new_tokens=20, do_sample=True, num_return_sequences=3, seed=1)
    assert len(results) == 3 and len({r.token_ids for r in results}) == 3
    batched = gen.generate([PROMPT, "今天"], max_new_tokens=5, do_sample=True, num_return_sequences=2, seed=1)
    assert [len(group) for group in batched] == [2, 2]


@pytest.mark.parametrize(
    "options", [dict(do_sample=False), dict(do_sample=True, seed=3, top_p=0.9), dict(do_sample=False, stop=["了"])]
)
def test_stream_pieces_join_to_generate_text(tiny_model, generators, options):
    gen = generators(tiny_model)
    pieces = list(gen.stream(PROMPT, max_new_tokens=40, **options))
    assert "".join(pieces) == gen.generate(PROMPT, max_new_tokens=40, **options).text
    assert all(pieces)


def test_stream_is_incremental(tiny_model, generators):
    """The first piece arrives before generation ends (a generator, not a collected list)."""
    gen = generators(tiny_model)
    stream = gen.stream(PROMPT, max_new_tokens=40, do_sample=False)
    first = next(stream)
    assert first and isinstance(first, str)
    assert first + "".join(stream) == gen.generate(PROMPT, max_new_tokens=40, do_sample=False).text


def test_stop_strings(tiny_model, generators):
    gen = generators(tiny_model)
    full = gen.generate(PROMPT, max_new_tokens=40, do_sample=False)
    stop = full.text[6:8]
    expected = full.text[: full.text.find(stop)]
    result = gen.generate(PROMPT, max_new_tokens=40, do_sample=False, stop=[stop, "never appears 不会"])
    assert result.text == expected and result.finish_reason == "stop_string"
    assert result.token_ids == full.token_ids[: len(result.token_ids)] and len(result.token_ids) < len(full.token_ids)
    streamed = "".join(gen.stream(PROMPT, max_new_tokens=40, do_sample=False, stop=[stop]))
    assert streamed == expected  # nothing of the stop string was ever emitted


def test_bpe_stream_never_splits_a_character(bpe_model, generators):
    """Byte-level tokens can end inside a UTF-8 character: pieces must still join to the
    tokenizer's one-shot decoding (a split character would show up as U+FFFD)."""
    gen = generators(bpe_model)
    codec = gen.codec
    (e_acute,) = codec.token_sequences("é")
    assert len(e_acute) == 2  # two byte tokens, so the held-back path is exercised
    pieces = [codec.assembler().push(i) for i in e_acute[:1]]
    assert pieces == [""]
    assert codec.decode(e_acute) == "é"
    for seed in range(3):
        options = dict(max_new_tokens=30, do_sample=True, top_k=0, seed=seed)
        pieces = list(gen.stream("The quick", **options))
        result = gen.generate("The quick", **options)
        assert (
            "".join(pieces) == result.text == codec.tokenizer.decode(list(result.token_ids), skip_special_tokens=True)
        )


def test_uer_text_rules(full_model, generators):
    codec = generators(full_model).codec
    ids = codec.encode("这是hello world的测试，3.14！GPT")
    assert ids[0] == 101 and 102 not in ids  # [CLS] + tokens, no [SEP]
    pieces = [codec.tokenizer.id_to_token(i) for i in ids]
    assert pieces[:5] == ["[CLS]", "这", "是", "hello", "world"]
    # WordPiece decoding would give "这 是 hello world 的 测 试 ， 3. 14 ！"; uer text has no such spaces
    assert codec.decode(ids + [102, 0]) == "这是hello world的测试，3.14！"  # [UNK] for "GPT" and specials dropped
    assert codec.decode(codec.encode("the model is testing python")) == "the model is testing python"
    assert codec.decode(codec.encode("「北京」（上海）……")) == "「北京」（上海）……"


def test_characters_outside_the_vocabulary_become_unk(full_model, generators):
    gen = generators(full_model)
    ids = gen.codec.encode("😀 ϕ 这")
    assert ids == [101, 100, 100, gen.codec.tokenizer.token_to_id("这")]
    assert len(gen.generate("😀 ϕ 这", max_new_tokens=3, stop_token_ids=[]).token_ids) == 3


def test_empty_prompt_starts_from_cls(tiny_model, generators):
    result = generators(tiny_model).generate("", max_new_tokens=5, do_sample=False)
    assert result.prompt_tokens == 1 and len(result.token_ids) == 5


def test_max_new_tokens_zero(tiny_model, generators):
    result = generators(tiny_model).generate(PROMPT, max_new_tokens=0)
    assert result.text == "" and result.token_ids == () and result.finish_reason == "length"


def test_results_carry_timings(tiny_model, generators):
    result = generators(tiny_model).generate(PROMPT, max_new_tokens=10, do_sample=False)
    assert result.timings.new_tokens == 10
    assert result.timings.time_to_first_token_s > 0 and result.timings.decode_s > 0


def test_beam_search_times_its_first_token_when_chosen(tiny_model, generators):
    """Beam search yields its results only at the end; the clock is marked at the first step."""
    gen = generators(tiny_model)
    events = []
    request = gen.request(
        gen.codec.encode(PROMPT), gen.config(max_new_tokens=10, do_sample=False, num_beams=3), events.append
    )
    engine = gen.engine([request])
    engine.submit(request)
    engine.step()  # prefill and the first beam step
    assert request.clock.first_token is not None and events == []
    engine.run_until_done()
    assert len(events) == 1 and len(events[0].tokens) == 10


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(num_beams=0), "num_beams"),
        (dict(do_sample="yes"), "do_sample"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(seed="abc"), "seed"),
        (dict(stop=[""]), "stop"),
        (dict(early_stopping="sometimes"), "early_stopping"),
        (dict(max_tokens=5), "max_tokens"),
        (dict(num_return_sequences=2, do_sample=False), "num_return_sequences"),
        (dict(num_beams=2, num_return_sequences=3, do_sample=False), "num_return_sequences"),
        (dict(stop_token_ids=[10**6]), "stop_token_ids"),
    ],
)
def test_bad_options_name_the_parameter(tiny_model, generators, options, name):
    with pytest.raises(GenerationOptionError, match=name):
        generators(tiny_model).generate(PROMPT, **options)


@pytest.mark.parametrize("prompt", [None, 42, [], ["ok", 3], b"bytes"])
def test_bad_prompt_types(tiny_model, generators, prompt):
    with pytest.raises(GenerationOptionError, match="prompt"):
        generators(tiny_model).generate(prompt)


def test_context_limit(tiny_model, generators):
    gen = generators(tiny_model)  # 128 positions
    long_prompt = "这是很久之前的事情了" * 12  # 121 tokens with [CLS]
    with pytest.raises(ContextLengthError, match=r"121 tokens.*max_new_tokens is 20.*141 > 128.*truncate='left'"):
        gen.generate(long_prompt, max_new_tokens=20)
    result = gen.generate(long_prompt, max_new_tokens=20, truncate="left", do_sample=False)
    assert result.prompt_tokens == 108 and len(result.token_ids) == 20
    with pytest.raises(ContextLengthError):
        gen.generate("这", max_new_tokens=200, truncate="left")
    # ids given without the family's prefix: truncation keeps the most recent ids, no first id as a prefix
    ids = gen.encode(long_prompt)[1:]
    cut = gen.generate_ids(ids, max_new_tokens=20, truncate="left", do_sample=False)
    assert cut.token_ids == gen.generate_ids(ids[-108:], max_new_tokens=20, do_sample=False).token_ids


def test_rows_and_threads_are_bounded_and_the_error_names_the_bound(tiny_model, generators):
    """No one option makes a call allocate without bound: beams and sequences are at most
    MAX_ROWS, a call of many prompts decodes MAX_ROWS rows at a time (the rest wait, with the
    output they have alone), and threads are at most the machine's CPUs."""
    gen = generators(tiny_model)
    bound = rf"must be an int in \[1, {MAX_ROWS}\], got {MAX_ROWS + 1} .*{MAX_ROWS} rows"
    too_many = MAX_ROWS + 1
    for options in (dict(num_beams=too_many, do_sample=False), dict(num_return_sequences=too_many, do_sample=True)):
        with pytest.raises(GenerationOptionError, match=bound):
            gen.generate(PROMPT, **options)
    widest = gen.generate(PROMPT, num_beams=MAX_ROWS, num_return_sequences=MAX_ROWS, max_new_tokens=2, do_sample=False)
    assert len(widest) == MAX_ROWS
    options = dict(do_sample=True, seed=3, num_return_sequences=2, max_new_tokens=4)
    prompts = [PROMPT, "今天天气"] * 40  # 160 rows
    assert gen.engine([gen.request(gen.encode(p), gen.config(**options), None) for p in prompts]).max_rows == MAX_ROWS
    together = gen.generate(prompts, **options)
    alone = [gen.generate(p, **options) for p in prompts[:2]]

    def ids(results):
        return [[r.token_ids for r in group] for group in results]

    assert ids(together) == ids(alone) * 40
    with pytest.raises(GenerationOptionError, match=rf"threads must be an int in \[1, {os.cpu_count()}\]"):
        Generator.load(tiny_model, threads=os.cpu_count() + 1)


def test_concurrent_calls_give_sequential_results(tiny_model, generators):
    gen = generators(tiny_model, "int8")
    jobs = [dict(do_sample=True, seed=s, max_new_tokens=25) for s in range(8)] + [
        dict(do_sample=False, num_beams=3, max_new_tokens=10)
    ]
    sequential = [gen.generate(PROMPT, **j) for j in jobs]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda j: gen.generate(PROMPT, **j), jobs))
    assert [r.token_ids for r in concurrent] == [r.token_ids for r in sequential]


def test_kv_buffer_is_written_in_place(tiny_model, generators):
    """A decode step writes the new position into the cache's own buffers: no new cache per token."""
    decoder = generators(tiny_model, "int8").decoder
    cache, _ = decoder.prefill([[101, 5, 6, 7], [101, 8]], capacity=10)  # rows of different lengths, no padding
    buffers = list(cache.buffers)
    # [rows, n_head, capacity, head_dim]: capacity 10 rounded up to a page of positions (64 × 16 floats)
    assert [b.shape for b in buffers] == [(2, 4, 64, 16)] * len(buffers)
    assert not buffers[0][1, :, 2:].any()  # row 1 filled its 2 positions only
    decoder.step(cache, np.array([9, 9]))
    assert all(a is b for a, b in zip(cache.buffers, buffers)) and cache.lengths.tolist() == [5, 3]
    assert buffers[0][1, :, 2].any() and not buffers[0][1, :, 3:].any()  # the new key went to position 2 of row 1
    assert buffers[0][0, :, 4].any() and not buffers[0][0, :, 5:].any()


def test_generate_ids_uses_ids_as_given(tiny_model, generators):
    gen = generators(tiny_model)
    assert (
        gen.generate_ids(gen.codec.encode(PROMPT), max_new_tokens=8, do_sample=False).token_ids
        == gen.generate(PROMPT, max_new_tokens=8, do_sample=False).token_ids
    )
    with pytest.raises(GenerationOptionError, match="prompt_ids"):
        gen.generate_ids([10**7])


# --- processors and warpers against transformers' own, on the same scores ---------------


def test_processors_equal_transformers_processors():
    from transformers.generation.logits_process import (
        MinNewTokensLengthLogitsProcessor,
        NoBadWordsLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    rng = np.random.default_rng(0)
    vocab, rows = 50, 4
    for _ in range(20):
        width = int(rng.integers(3, 30))
        histories = rng.integers(0, 12, (rows, width)).tolist()  # few distinct ids: n-grams repeat
        scores = rng.normal(0, 3, (rows, vocab)).astype(np.float32)
        bad = ((int(histories[0][-1]), 7), (9,))
        config = GenerationConfig(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=5)
        ours = Processors(config, (3, 4), bad)(scores.copy(), histories, n_new=2)
        ids, s = torch.tensor(histories), torch.from_numpy(scores.copy())
        for p in (
            RepetitionPenaltyLogitsProcessor(1.3),
            NoRepeatNGramLogitsProcessor(3),
            NoBadWordsLogitsProcessor([list(b) for b in bad], eos_token_id=None),
            MinNewTokensLengthLogitsProcessor(width - 2, 5, [3, 4]),
        ):
            s = p(ids, s)
        np.testing.assert_allclose(ours, s.numpy(), rtol=1e-6)


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (0, 0.3), (10, 1.0), (20, 0.8), (0, 0.999), (3, 0.01)])
def test_sampling_candidates_equal_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(1)
    for scale in (0.5, 3.0):
        row = rng.normal(0, scale, 1000).astype(np.float32)
        s = torch.from_numpy(row.copy())[None]
        if top_k:
            s = TopKLogitsWarper(top_k)(None, s)
        if top_p < 1:
            s = TopPLogitsWarper(top_p)(None, s)
        expected = set(np.flatnonzero(np.isfinite(s.numpy()[0])).tolist())
        ids, _ = sampling_candidates(row, top_k, top_p)
        assert set(range(1000) if ids is None else ids.tolist()) == expected
        scaled_ids, _ = sampling_candidates(row * 2.0, top_k, top_p, temperature=2.0)  # same distribution
        assert set(range(1000) if scaled_ids is None else scaled_ids.tolist()) == expected


def test_sampling_follows_the_distribution():
    """Draws from softmax(logits / T): frequencies within a few standard errors."""
    from gpt2_onnx.logits import sample

    p = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(p.astype(np.float32))[None]
    rng = np.random.default_rng(0)
    for temperature, top_k in ((1.0, 0), (2.0, 0), (2.0, 3)):
        config = GenerationConfig(do_sample=True, top_k=top_k, temperature=temperature)
        draws = np.array([sample(logits.copy(), config, rng)[0] for _ in range(20000)])
        expected = p ** (1 / temperature)
        expected[top_k or 4 :] = 0
        np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), expected / expected.sum(), atol=0.015)


def test_none_means_the_default(tiny_model, generators):
    gen = generators(tiny_model)
    nones = dict(
        stop=None, bad_words=None, top_k=None, temperature=None, num_beams=None, stop_token_ids=None, truncate=None
    )
    with_nones, plain = (gen.generate(PROMPT, max_new_tokens=8, seed=1, **o) for o in (nones, {}))
    assert with_nones.token_ids == plain.token_ids and with_nones.text == plain.text
    assert gen.config(max_new_tokens=None, do_sample=None) == gen.config()


@pytest.mark.parametrize("options", [dict(), dict(stop=["\udcff"]), dict(bad_words=["a\ud800"])])
def test_text_that_is_not_utf8_is_refused(tiny_model, generators, options):
    gen = generators(tiny_model)
    prompt = "这是\udcff" if not options else PROMPT  # \udcff: the byte 0xff, as argv and stdin decode it
    with pytest.raises(GenerationOptionError, match="is not valid UTF-8"):
        gen.generate(prompt, max_new_tokens=3, **options)


class _Biased:
    """A decoder whose logits favour some tokens by far, to force the model toward them."""

    def __init__(self, decoder, token_ids):
        self._decoder, self._ids = decoder, list(token_ids)

    def _bias(self, logits):
        logits = logits.copy()
        logits[..., self._ids] += 100.0
        return logits

    def empty(self, *args, **kwargs):
        return self._decoder.empty(*args, **kwargs)

    def run(self, cache, first, ids, **kwargs):
        return self._bias(self._decoder.run(cache, first, ids, **kwargs))


def test_bad_word_text_is_banned_in_its_continuation_form(tiny_model, generators):
    """`--bad-word ing` bans [in, ##g] and the one-token continuation ##ing alike."""
    gen = generators(tiny_model)
    vocab = gen.codec.tokenizer.get_vocab()
    continuation = vocab["##ing"]
    forced = Generator(gen.model_dir, gen.manifest, gen.codec, _Biased(gen.decoder, [continuation]), gen.precision)
    assert continuation in forced.generate(PROMPT, max_new_tokens=10, do_sample=False).token_ids  # the bias works
    tokens = forced.generate(PROMPT, max_new_tokens=30, do_sample=False, bad_words=["ing"]).token_ids
    assert continuation not in tokens
    plain = gen.codec.encode("ing")[1:]  # [in, ##g], without [CLS]
    assert not any(list(tokens[i : i + len(plain)]) == plain for i in range(len(tokens)))


def test_a_failing_step_ends_its_requests_and_the_engine_goes_on(tiny_model, generators, monkeypatch):
    """A server's engine thread must never leave callers waiting: a step that raises ends
    every request with an `error` event, and the next request runs."""
    import threading

    from gpt2_onnx import plan
    from gpt2_onnx.engine import Engine

    gen = generators(tiny_model)
    engine = Engine(gen.decoder, gen.codec, max_rows=4, capacity=64)
    real, calls = plan.run, []

    def failing_once(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a kernel failed")
        return real(*args)

    monkeypatch.setattr(plan, "run", failing_once)
    stop = threading.Event()
    thread = threading.Thread(target=engine.serve_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        for expected in ("error", "length"):
            events, finished = [], threading.Event()

            def collect(event, events=events, finished=finished):
                events.append(event)
                if event.finish_reason:
                    finished.set()

            engine.submit(gen.request(gen.codec.encode(PROMPT), gen.config(max_new_tokens=5, do_sample=False), collect))
            assert finished.wait(60) and events[-1].finish_reason == expected
        assert engine.stats().decoding_rows == 0 and engine.stats().reserved_positions == 0
    finally:
        stop.set()
        thread.join(10)


# --- the prefix cache's one rule, and the engine a front door gets -------------------------------


def test_the_default_prefix_cache_is_on_where_the_precision_allows_it(tiny_int4):
    from gpt2_onnx.generator import DEFAULT_PREFIX_CACHE_MB

    on = Generator.load(tiny_int4, precision="fp32", prefix_cache_mb=None)
    assert on.prefix_cache is not None and on.prefix_cache.budget_bytes == DEFAULT_PREFIX_CACHE_MB * 2**20
    off = Generator.load(tiny_int4, precision="int4", prefix_cache_mb=None)
    assert off.prefix_cache is None
    assert off.generate(PROMPT, max_new_tokens=3, do_sample=False).finish_reason == "length"
    assert Generator.load(tiny_int4, precision="fp32").prefix_cache is None  # a library call opts in


def test_an_explicit_prefix_cache_on_int4_names_the_fix(tiny_int4):
    with pytest.raises(GenerationOptionError, match=r"int4 is not: .*prefix_cache_mb=0"):
        Generator.load(tiny_int4, precision="int4", prefix_cache_mb=16)
    assert Generator.load(tiny_int4, precision="int4", prefix_cache_mb=0).prefix_cache is None


def test_new_engine_is_bound_to_the_model(tiny_model):
    gen = Generator.load(tiny_model, precision="int8", prefix_cache_mb=1)
    architecture = gen.manifest.architecture
    engine = gen.new_engine(3, kv_cache_mb=0.5, prefill_chunk=4)
    assert (engine.max_rows, engine.capacity, engine.prefill_chunk) == (3, architecture.n_positions, 4)
    assert engine.budget == int(0.5 * 2**20 // architecture.kv_bytes_per_token)
    assert engine.prefix_cache is gen.prefix_cache
    assert gen.new_engine(2, capacity=40).budget == 2 * 40  # no kv_cache_mb: every row may fill its positions
    tokens: list[int] = []
    config = gen.config(max_new_tokens=6, do_sample=False)
    engine.submit(gen.request(gen.encode(PROMPT), config, lambda event: tokens.extend(event.tokens)))
    engine.run_until_done()
    assert tuple(tokens) == gen.generate(PROMPT, max_new_tokens=6, do_sample=False).token_ids
    for bad in (0, 2.0, True):
        with pytest.raises(GenerationOptionError, match="max_rows"):
            gen.new_engine(bad)
