"""The engine's step as plan → run → commit (tiny model): every row holds what the plan ran, a
verification gives back the proposals it rejects once, the stats are one snapshot a step, and
`steps` / `run_until_done` drive an engine to the end."""

from __future__ import annotations

import dataclasses

import pytest

from gpt2_onnx import plan as planning
from gpt2_onnx.engine import Engine
from gpt2_onnx.prefix_cache import PrefixCache
from gpt2_onnx.session import Decoder
from gpt2_onnx.speculative import Speculation

PROMPT = "这是很久之前的事情了，我们去公园散步吧。今天天气晴朗，北京的春天来了。"


def _rows_hold_their_tokens(engine: Engine) -> None:
    """Every request's rows are where it says, in the engine's order, and each row holds its
    history but the pending token (a prompt being prefilled: what has run of it)."""
    row = 0
    for a in engine.decoding:
        assert (a.first, a.width) == (row, len(a.histories))
        held = [int(n) for n in engine.cache.lengths[row : row + a.width]]
        assert held == [len(h) - 1 for h in a.histories] == [a.computed] * a.width
        row += a.width
    for a in engine.prefilling:
        assert (a.first, a.width) == (row, 1)
        assert engine.cache.lengths[row] == a.computed < len(a.request.prompt_ids)
        row += 1
    assert len(engine.cache.lengths) == row


def test_every_row_holds_what_the_plan_ran(tiny_model, generators, monkeypatch):
    """Chunked prompts, a prefix-cache hit, beams, several sequences and a scratch row (a decoder
    that binds two rows to every one-token call) in one engine: after each step every row that
    ran holds what it held plus the plan's tokens, and every request's tokens are those it gets alone."""
    gen = generators(tiny_model, "int8")
    a = gen.manifest.architecture
    decoder = Decoder(gen.decoder.session, a, min_rows=2)
    engine = Engine(
        decoder,
        gen.codec,
        max_rows=8,
        capacity=a.n_positions,
        prefill_chunk=5,
        prefix_cache=PrefixCache(16, 1 << 24, a.kv_bytes_per_token),
    )
    steps: list[tuple[planning.Plan, list[int]]] = []
    real_plan = planning.plan

    def recording(*args):
        step = real_plan(*args)
        steps.append((step, [w.active.computed for w in step.works]))
        return step

    monkeypatch.setattr(planning, "plan", recording)
    jobs = [
        (PROMPT, dict(do_sample=False)),
        (PROMPT[:20] + "明天", dict(do_sample=False, num_beams=2)),
        ("今天", dict(do_sample=True, seed=3, num_return_sequences=2)),
        (PROMPT[:3], dict(do_sample=False)),
    ]
    tokens: dict[tuple[int, int], list[int]] = {}
    requests = [
        gen.request(
            gen.encode(p),
            gen.config(max_new_tokens=8, stop_token_ids=[], **o),
            lambda e, i=i: tokens.setdefault((i, e.slot), []).extend(e.tokens),
        )
        for i, (p, o) in enumerate(jobs)
    ]
    engine.submit(requests[0])
    for n, _ in enumerate(engine.steps()):
        if n == 8:  # the first prompt is cached by now: the second begins with its blocks
            for request in requests[1:]:
                engine.submit(request)
        step, before = steps[-1]
        for work, held in zip(step.works, before):
            if work.active in engine.decoding + engine.prefilling:
                assert work.active.computed == held + work.tokens
        _rows_hold_their_tokens(engine)
    assert engine.prefix_cache.stats().hits == 1
    for i, (p, o) in enumerate(jobs):
        alone = gen.generate(p, max_new_tokens=8, stop_token_ids=[], **o)
        for slot, result in enumerate(alone if isinstance(alone, list) else [alone]):
            assert tuple(tokens[i, slot]) == result.token_ids


def test_a_verification_gives_back_its_rejected_proposals_once(tiny_model, generators, monkeypatch):
    """Proposals of two tokens, the first right and the second wrong: each verification keeps
    one, the row holds its history but the pending token after every step, and the output is
    the plain one."""
    gen = generators(tiny_model, "int8")
    ids = gen.encode(PROMPT)
    options = dict(max_new_tokens=16, do_sample=False, stop_token_ids=[])
    plain = gen.generate_ids(ids, **options).token_ids
    vocab = gen.manifest.architecture.vocab_size

    def propose(self, history, room, stop_ids):
        n = len(history) - len(ids)  # tokens so far; the pending one is plain[n - 1]
        return [plain[n], (plain[n + 1] + 1) % vocab] if n + 1 < len(plain) and n % 3 == 1 else []

    monkeypatch.setattr(Speculation, "propose", propose)
    tokens: list[int] = []
    request = gen.request(ids, gen.config(prompt_lookup_num_tokens=2, **options), lambda e: tokens.extend(e.tokens))
    engine = gen.engine([request])
    engine.submit(request)
    for _ in engine.steps():
        _rows_hold_their_tokens(engine)
    stats = engine.stats()
    assert tuple(tokens) == plain
    assert stats.proposed_tokens == 2 * stats.accepted_tokens > 0


def test_stats_are_one_snapshot_a_step(tiny_model, generators):
    """Readers on other threads get the snapshot the last step published, never a view of the
    engine's lists: it stays as it was while requests arrive, and cannot be changed."""
    gen = generators(tiny_model, "int8")
    engine = Engine(gen.decoder, gen.codec, max_rows=4, capacity=64)
    before = engine.stats()
    engine.submit(gen.request(gen.encode(PROMPT[:5]), gen.config(max_new_tokens=3, do_sample=False), lambda e: None))
    assert engine.stats() is before and before.waiting_requests == 0
    engine.step()
    after = engine.stats()
    assert after is not before and (after.decoding_requests, after.decoding_rows, after.waiting_requests) == (1, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.decoding_rows = 0


def test_steps_take_submissions_between_steps_and_run_until_done_counts_them(tiny_model, generators):
    gen = generators(tiny_model, "int8")
    engine = Engine(gen.decoder, gen.codec, max_rows=4, capacity=64)
    ended: list[str] = []

    def request(n):
        return gen.request(
            gen.encode(PROMPT[:6]),
            gen.config(max_new_tokens=n, do_sample=False),
            lambda e: e.finish_reason and ended.append(e.finish_reason),
        )

    engine.submit(request(3))
    for n, _ in enumerate(engine.steps()):
        if n == 0:
            engine.submit(request(6))  # joins after the first step; the loop goes on until it ends
    assert ended == ["length", "length"] and not engine.has_work
    engine.submit(request(5))
    assert engine.run_until_done() == 5  # the prompt and the first token, then one step per token
