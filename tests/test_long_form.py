"""Past the model's positions (context_overflow="slide") and the prefix cache: both exact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from gpt2_onnx import ContextLengthError, GenerationOptionError, Generator
from gpt2_onnx.engine import Request
from gpt2_onnx.window import slide_window

PROMPT = "这是很久之前的事情了"


def torch_greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[0, len(ids) :].tolist()


def test_two_slides_continue_as_transformers_from_the_kept_window(full_model, full_checkpoint, torch_model, generators):
    gen = generators(full_model, "fp32")
    n = gen.manifest.architecture.n_positions
    rng = np.random.default_rng(5)
    prompt = [101] + rng.integers(1000, 20000, 899).tolist()
    check = 16  # tokens compared after each slide
    first = n - len(prompt) + 1  # generated tokens when the row is full: the last of them is still to be fed
    second = first + n - n // 2
    keep = 7
    config = dict(
        max_new_tokens=second + check, do_sample=False, stop_token_ids=[], context_overflow="slide", context_keep=keep
    )
    ours = list(gen.generate_ids(prompt, **config).token_ids)
    assert len(ours) == second + check
    request = Request(prompt, gen.config(**config), None, None, None, prefix_len=1)
    reference = torch_model(full_checkpoint)
    for done in (first, second):
        history = prompt + ours[:done]
        window = slide_window(history[:-1], request, n)  # what the row kept, the pending token fed after it
        assert window[: 1 + keep] == prompt[: 1 + keep] and len(window) == n // 2
        assert torch_greedy(reference, window + [history[-1]], check) == ours[done : done + check]
    assert len(set(ours[first:])) > 10  # a varied continuation, so agreement says something


def test_slide_in_a_batch_stream_sampling_and_stop_strings(tiny_model, generators):
    gen = generators(tiny_model, "int8")  # 128 positions
    options = dict(max_new_tokens=300, do_sample=False, stop_token_ids=[], context_overflow="slide")
    prompts = [PROMPT, "今天天气晴朗，我们去公园散步吧"]
    batch = gen.generate(prompts, **options)
    alone = [gen.generate(p, **options) for p in prompts]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone] and all(len(r.token_ids) == 300 for r in batch)
    assert "".join(gen.stream(PROMPT, **options)) == alone[0].text
    sampled = dict(options, do_sample=True, seed=4)
    assert gen.generate(PROMPT, **sampled).token_ids == gen.generate(PROMPT, **sampled).token_ids
    stop = alone[0].text[250:252]
    cut = gen.generate(PROMPT, **options, stop=[stop])
    assert cut.finish_reason == "stop_string" and cut.text == alone[0].text[: alone[0].text.find(stop)]
    with pytest.raises(GenerationOptionError, match="context_overflow"):
        gen.generate(PROMPT, max_new_tokens=300, context_overflow="slide", num_beams=2, do_sample=False)
    with pytest.raises(GenerationOptionError, match="context_keep"):
        gen.generate(PROMPT * 7, max_new_tokens=300, context_overflow="slide", context_keep=100)  # 71 kept > 64
    with pytest.raises(GenerationOptionError, match="128 positions"):
        gen.generate(PROMPT, max_new_tokens=300)  # the default still refuses


def test_truncate_left_with_slide_cuts_only_to_what_starts(tiny_model, generators):
    """Sliding makes room as it goes: truncate left cuts a prompt to the context minus one
    position (not minus max_new_tokens), whatever max_new_tokens is, and sliding takes over."""
    gen = generators(tiny_model, "int8")  # 128 positions
    n = gen.manifest.architecture.n_positions
    ids = gen.encode(PROMPT * 20)  # 201 tokens with [CLS]
    kept = ids[:1] + ids[len(ids) - (n - 2) :]  # [CLS] and the latest tokens: n - 1 in all
    for new_tokens in (20, n - 1, 300):
        options = dict(max_new_tokens=new_tokens, do_sample=False, stop_token_ids=[], context_overflow="slide")
        result = gen.generate_ids(ids, truncate="left", **options)
        assert result.prompt_tokens == n - 1 and len(result.token_ids) == new_tokens
        assert result.token_ids == gen.generate_ids(kept, **options).token_ids
    with pytest.raises(ContextLengthError, match=rf"{len(ids)} tokens.*may hold {n - 1} of the {n} positions"):
        gen.generate_ids(ids, max_new_tokens=300, context_overflow="slide")


def first_logprobs(gen: Generator, prompt: str) -> tuple[float, list]:
    result = []
    request = gen.request(
        gen.codec.encode(prompt),
        gen.config(max_new_tokens=1, do_sample=False, logprobs=20),
        lambda event: result.append(event.logprobs[0]),
    )
    gen.run([request])
    return result[0]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_prefix_cache_is_exact_full_size(full_model, precision):
    cold = Generator.load(full_model, precision=precision)
    warm = Generator.load(full_model, precision=precision, prefix_cache_mb=256)
    shared = "这是很久之前的事情了，" * 64  # 705 tokens with [CLS]
    variants = [shared + "北京的春天", shared + "上海", shared[:-7] + "今天天气"]  # the last one differs inside a block
    for prompt in variants:
        assert first_logprobs(warm, prompt) == first_logprobs(cold, prompt)  # bit for bit
        options = dict(max_new_tokens=12, do_sample=False)
        assert warm.generate(prompt, **options).token_ids == cold.generate(prompt, **options).token_ids
    stats = warm.prefix_cache.stats()
    assert stats.hits >= 4 and stats.hit_tokens >= 4 * 688 and stats.bytes <= stats.budget_bytes


def test_prefix_cache_eviction_and_concurrent_requests(full_model):
    cold = Generator.load(full_model, precision="int8")
    block_bytes = 16 * cold.manifest.architecture.kv_bytes_per_token
    small = Generator.load(full_model, precision="int8", prefix_cache_mb=20 * block_bytes / 2**20)  # 20 blocks
    prompts = ["甲" * 300 + "一", "乙" * 300 + "二", "甲" * 300 + "三"]  # the second evicts most of the first
    options = dict(max_new_tokens=8, do_sample=False)
    for p in prompts:
        assert small.generate(p, **options).token_ids == cold.generate(p, **options).token_ids
    stats = small.prefix_cache.stats()
    assert stats.blocks <= 20 and stats.bytes <= stats.budget_bytes
    shared = Generator.load(full_model, precision="int8", prefix_cache_mb=128)
    many = ["这是很久之前的事情了" * 40 + tail for tail in "北京上海广州深圳"]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda p: shared.generate(p, **options).token_ids, many * 2))
    assert concurrent == [cold.generate(p, **options).token_ids for p in many * 2]
    together = shared.generate(many, **options)  # one engine: later prompts hit what earlier ones left
    assert [r.token_ids for r in together] == concurrent[: len(many)]
    assert shared.prefix_cache.stats().hits > 0


def test_prefix_cache_keeps_whole_blocks_within_its_budget():
    """Blocks are `block_size` × `token_bytes`: a block that cannot fit is never copied out of
    the row, and a prompt stores only the blocks the budget holds (its first ones)."""
    from gpt2_onnx.prefix_cache import PrefixCache

    reads = []

    def read(start, end):
        reads.append((start, end))
        return np.full((2, 1, end - start, 1), start, np.float32)  # 8 bytes a position

    ids = list(range(13))
    PrefixCache(4, 31, token_bytes=8).insert(ids, read)
    assert reads == []  # a 32-byte block never fits 31 bytes
    cache = PrefixCache(4, 2 * 32, token_bytes=8)
    cache.insert(ids, read)
    assert reads == [(0, 4), (4, 8)] and cache.stats().bytes == 64
    assert [kv[0, 0, 0, 0] for kv in cache.lookup(ids)] == [0, 4]
    assert cache.lookup([99] + ids[1:]) == [] and cache.stats().hits == 1
