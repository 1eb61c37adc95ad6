"""The server's token-level surface against a real `gpt2-onnx serve` process (the openai client, and httpx
for what it cannot send): /tokenize and /detokenize in llama-server's and vLLM's shapes, prompts given as
token ids, and `usage.prompt_tokens_details.cached_tokens` from the prefix cache."""

from __future__ import annotations

import json

import pytest
from test_server import KEY, MODEL, running_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

TEXT = "这是很久之前的事情了"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(tiny_model):
    with running_server(tiny_model, "--max-running", "4") as (url, _):  # int8: the prefix cache is on by default
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_model, generators):
    return generators(tiny_model, "int8")


def post(server: str, path: str, body: dict, headers: dict = HEADERS) -> httpx.Response:
    return httpx.post(server + path, json=body, headers=headers, timeout=30)


# --- /tokenize and /detokenize -------------------------------------------------------------------


def test_tokenize_in_llama_servers_shape(server, reference):
    """`content` with llama-server's default (no [CLS]), and `with_pieces`: one CJK character per token."""
    r = post(server, "/tokenize", {"content": TEXT})
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert ids == reference.encode(TEXT)[1:] and len(ids) == len(TEXT)
    pieces = post(server, "/tokenize", {"content": TEXT, "with_pieces": True}).json()["tokens"]
    assert pieces == [{"id": t, "piece": ch} for t, ch in zip(ids, TEXT)]
    with_cls = post(server, "/tokenize", {"content": TEXT, "add_special": True}).json()["tokens"]
    assert with_cls == reference.encode(TEXT) and with_cls[1:] == ids
    special = post(server, "/tokenize", {"content": "这[SEP]", "with_pieces": True}).json()["tokens"]
    assert [t["piece"] for t in special] == ["这", "[SEP]"]  # special-token text is read as that token


def test_tokenize_in_vllms_shape_counts_what_a_completion_runs(server, client):
    """`prompt` with vLLM's default (special tokens added: [CLS] for uer): its count is the usage's prompt_tokens."""
    r = post(server, "/tokenize", {"model": MODEL, "prompt": TEXT, "return_token_strs": True})
    body = r.json()
    assert r.status_code == 200 and body["max_model_len"] == 128 and body["count"] == len(TEXT) + 1
    assert body["token_strs"] == ["[CLS]", *TEXT] and len(body["tokens"]) == body["count"]
    completion = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=2, temperature=0)
    assert completion.usage.prompt_tokens == body["count"]
    bare = post(server, "/tokenize", {"prompt": TEXT, "add_special_tokens": False}).json()
    assert bare["tokens"] == body["tokens"][1:] and bare["count"] == len(TEXT)


def test_detokenize_reads_as_generated_text_does(server, reference):
    """Specials dropped, no spaces between CJK characters; the text under both clients' names."""
    ids = post(server, "/tokenize", {"prompt": TEXT}).json()["tokens"]
    r = post(server, "/detokenize", {"model": MODEL, "tokens": ids})
    assert r.status_code == 200 and r.json() == {"content": TEXT, "prompt": TEXT}
    generated = reference.generate(TEXT, max_new_tokens=12, do_sample=False)
    assert post(server, "/detokenize", {"tokens": list(generated.token_ids)}).json()["content"] == generated.text
    assert post(server, "/detokenize", {"tokens": []}).json()["content"] == ""


@pytest.mark.parametrize(
    "path, body, status, param",
    [
        ("/detokenize", {"tokens": [10**7]}, 400, "tokens"),  # out of the vocabulary
        ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
        ("/detokenize", {"tokens": "这是"}, 400, "tokens"),
        ("/detokenize", {"tokens": [True]}, 400, "tokens"),
        ("/detokenize", {}, 400, "tokens"),
        ("/tokenize", {"content": 5}, 400, "content"),
        ("/tokenize", {"prompt": ["这是"]}, 400, "prompt"),
        ("/tokenize", {}, 400, "content"),
        ("/tokenize", {"content": "这", "prompt": "是"}, 400, "prompt"),
        ("/tokenize", {"content": "这", "add_special": "yes"}, 400, "add_special"),
        ("/tokenize", {"content": "这", "add_special": True, "add_special_tokens": False}, 400, "add_special_tokens"),
        ("/tokenize", {"content": "这", "parse_special": False}, 400, "parse_special"),  # unsupported: refused
        ("/tokenize", {"prompt": "这", "messages": []}, 400, "messages"),
        ("/tokenize", {"model": "other", "prompt": "这"}, 404, "model"),
        ("/detokenize", {"model": "other", "tokens": [1]}, 404, "model"),
    ],
)
def test_bad_tokenize_bodies_name_their_field(server, path, body, status, param):
    r = post(server, path, body)
    error = r.json()["error"]
    assert r.status_code == status and set(error) == {"message", "type", "param", "code"}, r.text
    assert error["param"] == param and error["message"]


def test_tokenize_needs_the_key_as_v1_does(server):
    for path, body in (("/tokenize", {"content": "这"}), ("/detokenize", {"tokens": [1]})):
        assert post(server, path, body, headers={}).status_code == 401
        assert post(server, path, body, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_non_utf8_text_names_its_field(server):
    r = httpx.post(
        server + "/tokenize",
        content=json.dumps({"content": "x\udcff"}).encode(),
        headers={**HEADERS, "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "content"


# --- prompts given as token ids ------------------------------------------------------------------


def test_id_prompts_run_exactly_as_given(client, reference):
    """A list of ids is one prompt, run as given (no [CLS] added, as vLLM does); a list of lists is several."""
    with_cls, bare = reference.encode(TEXT), reference.encode(TEXT)[1:]
    options = dict(max_tokens=10, temperature=0)
    out = client.completions.create(model=MODEL, prompt=with_cls, **options)
    assert out.choices[0].text == client.completions.create(model=MODEL, prompt=TEXT, **options).choices[0].text
    assert out.usage.prompt_tokens == len(with_cls)
    both = client.completions.create(model=MODEL, prompt=[with_cls, bare], **options)
    expected = [reference.generate_ids(ids, max_new_tokens=10, do_sample=False).text for ids in (with_cls, bare)]
    assert [c.text for c in both.choices] == expected and expected[0] != expected[1]
    assert both.usage.prompt_tokens == len(with_cls) + len(bare)


def test_echo_of_an_id_prompt_is_its_text(server, client):
    ids = post(server, "/tokenize", {"prompt": TEXT}).json()["tokens"]
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert out.choices[0].text == TEXT + plain.choices[0].text
    chunks = list(
        client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0, echo=True, stream=True)
    )
    assert chunks[0].choices[0].text == TEXT and "".join(c.choices[0].text for c in chunks) == out.choices[0].text


@pytest.mark.parametrize(
    "prompt, code",
    [
        ([10**7], "invalid_value"),
        ([[5, 6], [-1]], "invalid_value"),
        ([[5], []], "invalid_type"),
        ([5, "这"], "invalid_type"),
        ([True], "invalid_type"),
        ([], "invalid_type"),
    ],
)
def test_bad_id_prompts_are_400_on_prompt(client, prompt, code):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    error = info.value.body
    assert error["param"] == "prompt" and error["code"] == code and "token id" in error["message"], error


# --- cached tokens ---------------------------------------------------------------------------------


def test_cached_tokens_count_the_prefix_cache_hits(client):
    """The same long prompt twice: the second starts from the cached blocks (whole 16-token blocks, at least one
    prompt token left to compute) and says so, in the response and in the streamed usage chunk; same text."""
    prompt = (
        "春眠不觉晓处处闻啼鸟夜来风雨声花落知多少" * 3
    )  # 60 characters + [CLS]: 3 full blocks before the last token
    options = dict(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    first = client.completions.create(**options)
    second = client.completions.create(**options)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == 61
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 48  # (61 - 1) // 16 blocks
    assert second.choices[0].text == first.choices[0].text
    chunks = list(client.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 48
    assert "".join(c.choices[0].text for c in chunks if c.choices) == first.choices[0].text
    short = client.completions.create(model=MODEL, prompt="春眠", max_tokens=2, temperature=0)
    assert short.usage.prompt_tokens_details.cached_tokens == 0
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=2)
    assert chat.usage.prompt_tokens_details.cached_tokens == 48
