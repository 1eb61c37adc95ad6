"""The runtime decodes exactly like transformers' generate() on the same checkpoint (FP32), with
either cache manager (`tiny_model` and `full_model` run each test once per I/O convention)."""

from __future__ import annotations

import pytest
import torch

PROMPTS = ["这是很久之前的事情了", "今天", "hello world 中文模型测试，今天天气晴朗", "北京上海"]


def transformers_generate(model, rows: list[list[int]], pad_id: int, **kwargs) -> list[list[int]]:
    """Left-padded batch through transformers' generate; new ids of each row, cut after eos."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, pad_token_id=pad_id, **kwargs)
    eos = kwargs.get("eos_token_id")
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    result = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result


def test_greedy_64_tokens_batch_1_full_size(full_model, full_checkpoint, torch_model, generators):
    gen = generators(full_model)
    ours = gen.generate(PROMPTS[0], max_new_tokens=64, do_sample=False)
    prompt = gen.codec.encode(PROMPTS[0])
    theirs = transformers_generate(
        torch_model(full_checkpoint), [prompt], 0, max_new_tokens=64, do_sample=False, eos_token_id=102
    )
    assert list(ours.token_ids) == theirs[0]
    assert len(set(ours.token_ids)) > 5  # a varied path, not one repeated token


def test_greedy_64_tokens_batch_of_4_full_size(full_model, full_checkpoint, torch_model, generators):
    gen = generators(full_model)
    rows = [gen.codec.encode(p) for p in PROMPTS]
    assert len(set(map(len, rows))) == 4
    ours = gen.generate(PROMPTS, max_new_tokens=64, do_sample=False)
    theirs = transformers_generate(
        torch_model(full_checkpoint), rows, 0, max_new_tokens=64, do_sample=False, eos_token_id=102
    )
    assert [list(r.token_ids) for r in ours] == theirs
    alone = [gen.generate(p, max_new_tokens=64, do_sample=False).token_ids for p in PROMPTS]
    assert [r.token_ids for r in ours] == alone


def test_finished_rows_leave_the_batch_and_others_continue(tiny_model, generators):
    gen = generators(tiny_model)
    free = gen.generate(PROMPTS, max_new_tokens=20, do_sample=False)
    stop = free[1].token_ids[3]  # row 1 produces this token at step 4 at the latest
    stopped = gen.generate(PROMPTS, max_new_tokens=20, do_sample=False, stop_token_ids=[stop])
    for f, s in zip(free, stopped):
        cut = f.token_ids.index(stop) + 1 if stop in f.token_ids else len(f.token_ids)
        assert s.token_ids == f.token_ids[:cut]
        assert s.finish_reason == ("stop" if stop in f.token_ids else "length")
    assert stopped[1].finish_reason == "stop" and len(stopped[1].token_ids) <= 4


@pytest.mark.parametrize(
    "options",
    [
        dict(num_beams=4),
        dict(num_beams=4, num_return_sequences=4),
        dict(num_beams=4, length_penalty=0.3, early_stopping=True, num_return_sequences=2),
        dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
        dict(num_beams=4, no_repeat_ngram_size=2),
        dict(num_beams=4, length_penalty=-1.0, num_return_sequences=3),  # favours short, finished beams
    ],
)
def test_beam_search_matches_transformers(tiny_model, tiny_checkpoint, torch_model, generators, options):
    gen = generators(tiny_model)
    # a stop token the beams meet early, so finished hypotheses and the stopping rules matter
    stop = gen.generate(PROMPTS[0], max_new_tokens=8, do_sample=False).token_ids[0]
    prompt = gen.codec.encode(PROMPTS[0])
    ours = gen.generate(PROMPTS[0], max_new_tokens=24, do_sample=False, stop_token_ids=[stop], **options)
    ours = ours if isinstance(ours, list) else [ours]
    theirs = transformers_generate(
        torch_model(tiny_checkpoint), [prompt], 0, max_new_tokens=24, do_sample=False, eos_token_id=stop, **options
    )
    assert [list(r.token_ids) for r in ours] == theirs
    if options.get("length_penalty", 0) < 0:
        assert any(r.finish_reason == "stop" and r.token_ids[-1] == stop for r in ours)


def test_beam_search_batch_of_prompts(tiny_model, tiny_checkpoint, torch_model, generators):
    gen = generators(tiny_model)
    rows = [gen.codec.encode(p) for p in PROMPTS]
    ours = gen.generate(PROMPTS, max_new_tokens=16, do_sample=False, num_beams=4, num_return_sequences=2)
    theirs = transformers_generate(
        torch_model(tiny_checkpoint),
        rows,
        0,
        max_new_tokens=16,
        do_sample=False,
        num_beams=4,
        num_return_sequences=2,
        eos_token_id=102,
    )
    assert [list(r.token_ids) for group in ours for r in group] == theirs


@pytest.mark.parametrize(
    "ours_options, theirs_options",
    [
        (dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=2)),
        (dict(no_repeat_ngram_size=1), dict(no_repeat_ngram_size=1)),
        (dict(repetition_penalty=1.8), dict(repetition_penalty=1.8)),
        (dict(repetition_penalty=0.7), dict(repetition_penalty=0.7)),
    ],
)
def test_processors_match_transformers_generate(
    tiny_model, tiny_checkpoint, torch_model, generators, ours_options, theirs_options
):
    gen = generators(tiny_model)
    prompt = gen.codec.encode(PROMPTS[2])
    plain = gen.generate(PROMPTS[2], max_new_tokens=40, do_sample=False).token_ids
    ours = gen.generate(PROMPTS[2], max_new_tokens=40, do_sample=False, **ours_options).token_ids
    theirs = transformers_generate(
        torch_model(tiny_checkpoint),
        [prompt],
        0,
        max_new_tokens=40,
        do_sample=False,
        eos_token_id=102,
        **theirs_options,
    )[0]
    assert list(ours) == theirs
    assert ours != plain  # the option changed the outcome, so the comparison says something


def test_min_new_tokens_matches_transformers(tiny_model, tiny_checkpoint, torch_model, generators):
    gen = generators(tiny_model)
    first = gen.generate(PROMPTS[0], max_new_tokens=1, do_sample=False).token_ids[0]
    prompt = gen.codec.encode(PROMPTS[0])
    early = gen.generate(PROMPTS[0], max_new_tokens=30, do_sample=False, stop_token_ids=[first])
    assert early.token_ids == (first,) and early.finish_reason == "stop"
    ours = gen.generate(PROMPTS[0], max_new_tokens=30, do_sample=False, stop_token_ids=[first], min_new_tokens=6)
    theirs = transformers_generate(
        torch_model(tiny_checkpoint),
        [prompt],
        0,
        max_new_tokens=30,
        do_sample=False,
        eos_token_id=first,
        min_new_tokens=6,
    )[0]
    assert list(ours.token_ids) == theirs and len(theirs) >= 6


def test_bad_words_match_transformers(tiny_model, tiny_checkpoint, torch_model, generators):
    gen = generators(tiny_model)
    prompt = gen.codec.encode(PROMPTS[0])
    plain = gen.generate(PROMPTS[0], max_new_tokens=30, do_sample=False).token_ids
    single = gen.codec.piece(plain[0])  # a one-token word the model wants first
    pair = [plain[4], plain[5]]  # a two-token sequence it produces later
    ours = gen.generate(PROMPTS[0], max_new_tokens=30, do_sample=False, bad_words=[single, pair]).token_ids
    theirs = transformers_generate(
        torch_model(tiny_checkpoint),
        [prompt],
        0,
        max_new_tokens=30,
        do_sample=False,
        eos_token_id=102,
        bad_words_ids=[[plain[0]], pair],
    )[0]
    assert list(ours) == theirs and ours[0] != plain[0]
