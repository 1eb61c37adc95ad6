"""`gpt2-onnx serve` as a real process on 127.0.0.1, driven by the real `openai` client (and
httpx for what that client cannot send): outputs equal the Python API's, streamed or not,
alone or joining a running batch; every error class; cancellation; back-pressure; SIGTERM."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from slow_cli import cli_code

from gpt2_onnx import GenerationOptionError
from gpt2_onnx.benchmarks.serve_bench import free_port

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "test-key"
MODEL = "tiny"


@contextmanager
def running_server(model, *args: str, slow: bool = False, key: tuple[str, ...] = ("--api-key", KEY), env=None):
    """A `gpt2-onnx serve` child on a free loopback port, up once /health says ok: its base URL
    and the process. `key`: how the API key is given; `env`: the child's environment variables."""
    port = free_port()
    code = cli_code(slow)
    command = [
        sys.executable,
        "-c",
        code,
        "serve",
        "--model",
        str(model),
        "--model-name",
        MODEL,
        "--port",
        str(port),
        *key,
        "--threads",
        "1",
        *args,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the server exited: {proc.communicate()}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy within 120 s"
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_model):
    with running_server(tiny_model, "--max-running", "8", "--max-waiting", "64", "--max-body-bytes", "65536") as (
        url,
        _,
    ):
        yield url


@pytest.fixture(scope="module")
def slow_server(tiny_model):
    with running_server(tiny_model, "--max-running", "1", "--max-waiting", "2", slow=True) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_model, generators):
    return generators(tiny_model, "int8")


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")}


def wait_for(url: str, condition, timeout: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while not condition(values := metrics(url)):
        assert time.monotonic() < deadline, f"metrics never met the condition: {values}"
        time.sleep(0.05)
    return values


def idle(values: dict[str, float]) -> bool:
    return values["gpt2_onnx_requests_running"] == 0 and values["gpt2_onnx_requests_waiting"] == 0


# --- outputs -----------------------------------------------------------------------------------


def test_runtime_imports_no_front_door(tiny_model):
    code = (
        "import sys, gpt2_onnx; g = gpt2_onnx.Generator.load(sys.argv[1]); g.generate('这是', max_new_tokens=2); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'uvicorn', 'starlette') "
        "or m.startswith('gpt2_onnx.apps')))"
    )
    probe = subprocess.run([sys.executable, "-c", code, str(tiny_model)], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"


def test_the_front_doors_settings_import_nothing_heavy():
    """The command line reads its flags' defaults from apps/settings.py while building its parser."""
    code = (
        "import sys, gpt2_onnx.apps.settings; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'numpy', 'onnxruntime', 'fastapi', 'uvicorn', 'prometheus_client', 'ray'}))"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


def test_health_is_503_while_the_model_loads(tiny_model, generators):
    from fastapi.testclient import TestClient

    from gpt2_onnx.apps.server import Settings, create_app

    loaded = threading.Event()

    def load():
        assert loaded.wait(60)
        return generators(tiny_model, "int8")

    with TestClient(create_app(load, Settings(MODEL))) as http:
        assert http.get("/health").status_code == 503
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "这是", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        loaded.set()
        deadline = time.monotonic() + 60
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "这是", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_health_and_models(server):
    assert httpx.get(server + "/health", timeout=10).json() == {"status": "ok"}
    models = httpx.get(server + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


def test_completion_equals_generator_greedy_and_seeded(client, reference):
    for prompt, options, api in [
        ("这是很久之前的事情了", dict(do_sample=False), dict(temperature=0)),
        (
            "今天",
            dict(do_sample=True, temperature=0.9, top_k=0, top_p=0.95, seed=7),
            dict(temperature=0.9, top_p=0.95, seed=7),
        ),
    ]:
        expected = reference.generate(prompt, max_new_tokens=12, **options)
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, **api)
        assert out.choices[0].text == expected.text
        assert out.choices[0].finish_reason == {"length": "length"}.get(expected.finish_reason, "stop")
        assert out.usage.prompt_tokens == len(reference.encode(prompt))  # [CLS] counted, as the runtime does
        assert out.usage.completion_tokens == len(expected.token_ids)


def test_streamed_equals_unstreamed_with_usage(client):
    kwargs = dict(model=MODEL, prompt="这是", max_tokens=15, temperature=0.8, seed=3)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_chat_streamed_and_not(client, reference):
    messages = [{"role": "system", "content": "你好"}, {"role": "user", "content": "今天天气"}]
    expected = reference.generate("你好\n今天天气", max_new_tokens=10, do_sample=False)  # the default template
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected.text
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0, stream=True)
    chunks = [c for c in stream if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text


def test_n_and_prompt_lists(client, reference):
    out = client.completions.create(model=MODEL, prompt=["这是", "今天"], n=2, max_tokens=6, temperature=1.0, seed=11)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(["这是", "今天"]):
        expected = reference.generate(
            prompt, max_new_tokens=6, do_sample=True, top_k=0, seed=11, num_return_sequences=2
        )
        assert [c.text for c in out.choices[2 * i : 2 * i + 2]] == [r.text for r in expected]


def test_greedy_n_returns_n_identical_choices(client, reference):
    expected = reference.generate("这是", max_new_tokens=8, do_sample=False).text
    out = client.completions.create(model=MODEL, prompt=["这是", "这是"], n=3, max_tokens=8, temperature=0)
    assert [c.index for c in out.choices] == list(range(6)) and [c.text for c in out.choices] == [expected] * 6
    assert out.usage.completion_tokens == 6 * len(
        reference.generate("这是", max_new_tokens=8, do_sample=False).token_ids
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "这是"}], n=3, max_tokens=8, temperature=0, stream=True
    )
    texts = ["", "", ""]
    for chunk in stream:
        texts[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    assert texts == [expected] * 3


def test_stop_strings_never_leak(client):
    text = client.completions.create(model=MODEL, prompt="这是", max_tokens=30, temperature=0).choices[0].text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 1) if " " not in text[i : i + 2])
    streamed = client.completions.create(
        model=MODEL, prompt="这是", max_tokens=30, temperature=0, stop=[stop], stream=True
    )
    pieces = [c.choices[0] for c in streamed]
    joined = "".join(p.text for p in pieces)
    assert joined == text[: text.index(stop)]  # everything before the stop string's first appearance, nothing of it
    assert stop not in joined and len(pieces) > 1
    assert pieces[-1].finish_reason == "stop"
    whole = client.completions.create(model=MODEL, prompt="这是", max_tokens=30, temperature=0, stop=stop)
    assert whole.choices[0].text == joined and whole.choices[0].finish_reason == "stop"


def test_logprobs(client):
    out = client.completions.create(model=MODEL, prompt="这是", max_tokens=5, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == out.usage.completion_tokens == 5
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) <= 3 and chosen <= 0 and chosen == pytest.approx(max(top.values()))  # greedy: the best
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "这是"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)


def test_staggered_requests_join_the_batch_and_return_what_they_return_alone(client, reference):
    cases = [(p, s) for p in ("这是很久之前的事情了", "今天", "天气") for s in (None, 5)]

    def ask(k: int):
        prompt, seed = cases[k]
        time.sleep(0.03 * k)  # arrive while earlier ones decode
        api = dict(temperature=0) if seed is None else dict(temperature=1.0, seed=seed)
        return client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, **api).choices[0].text

    with ThreadPoolExecutor(len(cases)) as pool:
        texts = list(pool.map(ask, range(len(cases))))
    for (prompt, seed), text in zip(cases, texts):
        options = dict(do_sample=False) if seed is None else dict(do_sample=True, top_k=0, seed=seed)
        assert text == reference.generate(prompt, max_new_tokens=40, **options).text


# --- errors ------------------------------------------------------------------------------------


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value.status_code, info.value.body


@pytest.mark.parametrize(
    "body, param",
    [
        (dict(max_tokens="many"), "max_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=2), "top_p"),
        (dict(n=0), "n"),
        (dict(n=-1, temperature=0), "n"),
        (dict(n=9, temperature=0), "n"),  # greedy n takes one row, yet is held to --max-running as sampling is
        (dict(presence_penalty=3), "presence_penalty"),
        (dict(stop=[1, 2]), "stop"),
        (dict(max_tokens=5000), "prompt"),
        (dict(n=9), "n"),  # more rows than --max-running: the request's n, not its prompt
        (dict(bad_words=[[10**6]]), "bad_words"),  # an id past the vocabulary: the field, not the prompt
    ],
)
def test_bad_values_are_400_naming_the_field(client, body, param):
    extra = {k: v for k, v in body.items() if k not in ("max_tokens", "temperature", "n", "stop")}
    known = {k: v for k, v in body.items() if k in ("max_tokens", "temperature", "n", "stop")}
    status, error = error_of(lambda: client.completions.create(model=MODEL, prompt="这是", extra_body=extra, **known))
    assert status == 400 and error["param"] == param and error["message"]
    if param == "prompt":
        assert error["code"] == "context_length_exceeded" and "5000" in error["message"] and "128" in error["message"]
    else:
        assert error["code"] in ("invalid_value", "invalid_type")
    if body.get("n") == 9:  # the body's name, and the server's setting to raise
        assert "num_return_sequences" not in error["message"] and "--max-running" in error["message"]


def test_logit_bias_and_min_p_change_the_output_as_in_the_api(client, reference):
    plain = reference.generate("这是", max_new_tokens=5, do_sample=False)
    stops = set(reference.manifest.conventions.stop_token_ids)
    token = next(t for t in range(200, 1024) if t not in plain.token_ids and t not in stops)
    forced = reference.generate("这是", max_new_tokens=5, do_sample=False, logit_bias={token: 100})
    assert forced.token_ids == (token,) * 5
    out = client.completions.create(
        model=MODEL, prompt="这是", max_tokens=5, temperature=0, logit_bias={str(token): 100}, logprobs=1
    )
    assert out.choices[0].text == forced.text and out.usage.completion_tokens == 5
    assert all(lp == pytest.approx(0.0, abs=1e-6) for lp in out.choices[0].logprobs.token_logprobs)  # biased: certain
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "这是"}],
        max_tokens=5,
        temperature=0,
        logit_bias={token: 100},
    )
    assert chat.choices[0].message.content == forced.text  # the client sends the int key as JSON's string
    banned = dict.fromkeys(plain.token_ids, -100)
    expected = reference.generate("这是", max_new_tokens=5, do_sample=False, logit_bias=banned)
    out = client.completions.create(
        model=MODEL, prompt="这是", max_tokens=5, temperature=0, logit_bias={str(t): b for t, b in banned.items()}
    )
    assert out.choices[0].text == expected.text and not set(expected.token_ids) & set(plain.token_ids)
    # min_p 1 keeps only the most likely token: sampling gives the greedy text
    for seed in (1, 2):
        out = client.completions.create(
            model=MODEL, prompt="这是", max_tokens=5, temperature=1.0, seed=seed, extra_body={"min_p": 1.0}
        )
        assert out.choices[0].text == plain.text


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("logit_bias", {"1024": 1}, "logit_bias holds an id ≥ the vocabulary size 1024"),
        ("logit_bias", {"5": 101}, "logit_bias values must be numbers in [-100, 100], got 101 for token id 5"),
        ("logit_bias", {"abc": 1}, "logit_bias keys must be token ids"),
        ("logit_bias", {"5": "1"}, "logit_bias values must be numbers"),
        ("logit_bias", [5, 1], "logit_bias must be an object"),
        ("min_p", 1.5, "min_p must be in [0, 1], got 1.5"),
        ("min_p", -0.1, "min_p must be in [0, 1], got -0.1"),
        ("min_p", "high", "min_p must be a number"),
    ],
)
def test_bad_logit_bias_and_min_p_are_one_line_400s_naming_them(client, field, value, said):
    for call in (
        lambda: client.completions.create(model=MODEL, prompt="这是", max_tokens=2, extra_body={field: value}),
        lambda: client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "这是"}], max_tokens=2, extra_body={field: value}
        ),
    ):
        status, error = error_of(call)
        assert status == 400 and error["param"] == field and error["code"] in ("invalid_value", "invalid_type")
        assert error["message"].startswith(said) and "\n" not in error["message"], error


STRUCTURED_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "w": {"enum": ["yes", "no"]}},
    "required": ["n", "w"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "fields, valid",
    [
        ({"response_format": {"type": "json_object"}}, lambda t: isinstance(json.loads(t), dict)),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": STRUCTURED_SCHEMA}}},
            lambda t: set(json.loads(t)) == {"n", "w"} and json.loads(t)["w"] in ("yes", "no"),
        ),
        ({"guided_regex": "[0-9]{2}-[a-z]{3}"}, lambda t: re.fullmatch("[0-9]{2}-[a-z]{3}", t)),
        ({"guided_choice": ["yes", "no", "也许"]}, lambda t: t in ("yes", "no", "也许")),
        ({"guided_grammar": 'start: "a" NUM\nNUM: /[0-9]+/'}, lambda t: re.fullmatch("a[0-9]+", t)),
        ({"response_format": {"type": "text"}}, lambda t: True),
    ],
)
def test_structured_output_fields_constrain_completions_chat_and_streams(client, reference, fields, valid):
    """Each field, greedy and sampled (n=3), completions and chat, streamed or not: every finished choice is valid,
    and the text equals the Python API's with the same constraint."""
    chat = [{"role": "user", "content": "这是"}]
    out = client.completions.create(model=MODEL, prompt="这是", max_tokens=40, temperature=0, extra_body=fields)
    choice = out.choices[0]
    text_only = fields == {"response_format": {"type": "text"}}  # no constraint: the plain output
    assert text_only or choice.finish_reason == "stop" and valid(choice.text), choice
    if text_only:
        assert choice.text == reference.generate("这是", do_sample=False, max_new_tokens=40).text
    else:
        form = next(iter(fields))
        constraint = {
            "guided_regex": lambda v: {"regex": v},
            "guided_choice": lambda v: {"choice": v},
            "guided_grammar": lambda v: {"grammar": v},
            "response_format": lambda v: (
                {"json_object": True} if v["type"] == "json_object" else {"json_schema": v["json_schema"]["schema"]}
            ),
        }[form](fields[form])
        assert choice.text == reference.generate("这是", constraint=constraint, do_sample=False, max_new_tokens=40).text
    sampled = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=40, n=3, seed=5, extra_body=fields)
    for c in sampled.choices:
        assert c.finish_reason == "length" or valid(c.message.content), c
    pieces = client.completions.create(
        model=MODEL, prompt="这是", max_tokens=40, temperature=0, stream=True, extra_body=fields
    )
    assert "".join(p.choices[0].text for p in pieces) == choice.text


@pytest.mark.parametrize(
    "fields, param, said",
    [
        ({"guided_regex": "("}, "guided_regex", "unclosed group"),
        ({"guided_regex": "Ω+"}, "guided_regex", "no text this model's vocabulary can write"),
        ({"guided_regex": 5}, "guided_regex", "guided_regex must be a non-empty string"),
        ({"guided_choice": []}, "guided_choice", "guided_choice must be a non-empty list"),
        ({"guided_grammar": "start: foo"}, "guided_grammar", "unknown name"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}},
            "response_format",
            "objekt",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "schema is required",
        ),
        ({"response_format": {"type": "xml"}}, "response_format", "response_format.type must be"),
        ({"response_format": {"type": 5}}, "response_format.type", "response_format.type must be a string"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "must be true or false"),
        ({"response_format": {"type": "json_object", "strict": True}}, "response_format.strict", "unsupported field"),
        ({"response_format": "json"}, "response_format", "response_format must be an object"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "both constrain the text"),
    ],
)
def test_bad_structured_output_and_nested_fields_are_one_line_400s_naming_them(client, fields, param, said):
    status, error = error_of(
        lambda: client.completions.create(model=MODEL, prompt="这是", max_tokens=2, extra_body=fields)
    )
    assert status == 400 and error["param"] == param and said in error["message"], error
    assert "\n" not in error["message"]


@pytest.mark.parametrize(
    "endpoint, field, value",
    [
        ("chat/completions", "tool_choice", "auto"),
        ("completions", "best_of", 3),
        ("completions", "suffix", "。"),
        ("completions", "temprature", 0),  # a typo is no silent default
        ("chat/completions", "tools", [{"type": "function", "function": {"name": "f"}}]),
        ("chat/completions", "prompt", "x"),  # a completions field on chat
        ("completions", "stream_options", {"include_usage": True, "continuous_usage_stats": True}),
    ],
)
def test_unsupported_fields_are_400_naming_them(server, endpoint, field, value):
    body = {"model": MODEL, "max_tokens": 2, field: value}
    body.update(
        {"messages": [{"role": "user", "content": "这是"}]} if endpoint.startswith("chat") else {"prompt": "这是"}
    )
    r = httpx.post(f"{server}/v1/{endpoint}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    error = r.json()["error"]
    name = "stream_options.continuous_usage_stats" if field == "stream_options" else field
    assert r.status_code == 400 and set(error) == {"message", "type", "param", "code"}
    assert error["param"] == name and name in error["message"] and error["type"] == "invalid_request_error"


def test_a_message_field_this_server_lacks_is_400_naming_it_and_name_is_accepted(server):
    def post(message: dict) -> httpx.Response:
        body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "system", "content": "你好"}, message]}
        return httpx.post(
            f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        )

    r = post({"role": "assistant", "content": "这是", "tool_calls": [{"id": "c", "type": "function"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].tool_calls", r.text
    assert post({"role": "user", "content": "这是", "name": "li"}).status_code == 200
    assert post({"role": "user", "content": "这是", "name": 5}).json()["error"]["param"] == "messages[1].name"


def test_ignored_openai_fields_and_a_lower_case_bearer_are_accepted(server):
    body = {"model": MODEL, "prompt": "这是", "max_tokens": 2, "user": "u-1", "metadata": {"team": "a"}}
    for scheme in ("bearer", "BEARER", "Bearer"):
        r = httpx.post(server + "/v1/completions", json=body, headers={"Authorization": f"{scheme} {KEY}"}, timeout=10)
        assert r.status_code == 200, r.text
    r = httpx.post(
        server + "/v1/completions", json={**body, "user": 5}, headers={"Authorization": f"bearer {KEY}"}, timeout=10
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "user"


def test_a_context_keep_that_leaves_no_window_names_itself(client):
    extra = {"context_overflow": "slide", "context_keep": 70}  # the window is half of 128 positions
    status, error = error_of(
        lambda: client.completions.create(model=MODEL, prompt="这是" * 40, max_tokens=16, extra_body=extra)
    )
    assert status == 400 and error["param"] == "context_keep" and error["code"] == "invalid_value"


def test_a_call_is_checked_whole_before_any_prompt_is_queued(tiny_model, generators):
    """A call whose second prompt exceeds the KV budget is refused before its first is queued:
    nothing waits, nothing is cancelled, nothing is counted in flight."""
    from gpt2_onnx.apps.bridge import Capacity, Service
    from gpt2_onnx.apps.metrics import Metrics
    from gpt2_onnx.apps.openai_api import ApiError, completion_job

    gen = generators(tiny_model, "int8")
    budget_mb = 60 * gen.manifest.architecture.kv_bytes_per_token / 2**20  # 60 positions
    service = Service(gen, Capacity(max_running=2, kv_cache_mb=budget_mb))
    service.metrics = Metrics(service.stats)
    job = completion_job({"model": MODEL, "prompt": ["这是", "这是" * 25], "max_tokens": 16, "temperature": 0})

    async def submit():
        return service.submit(job)

    with pytest.raises(ApiError) as info:
        asyncio.run(submit())
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
    assert not service.engine.has_work and service.in_flight == 0


def test_a_prompt_that_is_not_utf8_names_its_field(server):
    """A lone surrogate (valid JSON, not valid UTF-8) is a 400 on the field that holds it, not `param: null`."""
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "这是"}, {"role": "user", "content": "x\udcff"}]}
    for endpoint, body, param in (
        ("completions", {"model": MODEL, "prompt": "x\udcff"}, "prompt"),
        ("chat/completions", chat, "messages[1].content"),
    ):
        r = httpx.post(f"{server}/v1/{endpoint}", content=json.dumps(body).encode(), headers=headers, timeout=10)
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == param and "not valid UTF-8" in error["message"], error


def test_option_errors_are_answered_from_the_option_they_carry(tiny_model, generators):
    """The runtime's error carries its option and the engine limit it passed: the server names the body
    field, spells a remedy as one, and adds its own flag for the limit; the runtime names no server flag."""
    from gpt2_onnx.apps.openai_api import request_error
    from gpt2_onnx.engine import Engine

    gen = generators(tiny_model, "int8")
    request = gen.request(gen.encode("这是"), gen.config(num_return_sequences=4, do_sample=True), lambda event: None)
    with pytest.raises(GenerationOptionError) as info:
        Engine(gen.decoder, gen.codec, max_rows=2, capacity=64).check(request)
    assert (info.value.option, info.value.limit) == ("num_return_sequences", ("max_rows", 2))
    assert "--max-running" not in str(info.value) and "max_rows" in str(info.value)
    answer = request_error(info.value)
    assert answer.param == "n" and "this server's --max-running is 2" in answer.message
    with pytest.raises(GenerationOptionError) as info:
        gen.request(gen.encode("这是" * 60), gen.config(max_new_tokens=16), lambda event: None)
    answer = request_error(info.value)
    assert (answer.param, answer.code) == ("prompt", "context_length_exceeded")
    assert answer.message.endswith('or pass truncate="left"'), answer.message


def test_unknown_model_missing_key_and_wrong_key(server, client):
    status, error = error_of(lambda: client.completions.create(model="gpt-4", prompt="x"))
    assert status == 404 and error["code"] == "model_not_found"
    for key in ("wrong", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(server + "/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server + "/health", timeout=10).status_code == 200  # no key needed


def test_malformed_json_and_too_large_bodies(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(server + "/v1/completions", content=b'{"model": "tiny", "prompt": ', headers=headers, timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(
        server + "/v1/chat/completions", json={"model": MODEL, "messages": "hi"}, headers=headers, timeout=10
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    big = json.dumps({"model": MODEL, "prompt": "这" * 70000}).encode()
    r = httpx.post(server + "/v1/completions", content=big, headers=headers, timeout=10)
    assert r.status_code == 413 and set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "depth", [30000, 500]
)  # past the JSON reader's recursion limit; within it, in an error message
def test_deeply_nested_json_is_400(server, depth):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    body = '{"model": "tiny", "prompt": ' + "[" * depth + "]" * depth + "}"
    r = httpx.post(server + "/v1/completions", content=body.encode(), headers=headers, timeout=10)
    error = r.json()["error"]
    assert r.status_code == 400 and set(error) == {"message", "type", "param", "code"} and len(error["message"]) < 1000


def test_a_port_out_of_range_or_in_use_is_one_line(tiny_model):
    import socket

    def serve_on(port: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", cli_code(False), "serve", "--model", str(tiny_model), "--port", port],
            capture_output=True,
            text=True,
            timeout=120,
        )

    for port in ("70000", "0", "-1"):
        run = serve_on(port)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith("gpt2-onnx: error: ") and "65535" in run.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        run = serve_on(str(taken.getsockname()[1]))
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "in use" in run.stderr, run.stderr


def test_the_api_key_from_a_file_or_the_environment(tiny_model, tmp_path):
    import os

    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    for key, env in [(("--api-key-file", str(key_file)), {}), ((), {"GPT2_ONNX_API_KEY": "env-key"})]:
        secret = "file-key" if key else "env-key"
        with running_server(tiny_model, key=key, env={**os.environ, **env}) as (url, _):
            body = {"model": MODEL, "prompt": "这是", "max_tokens": 2}
            for given, status in ((secret, 200), (KEY, 401)):
                r = httpx.post(
                    url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {given}"}, timeout=10
                )
                assert r.status_code == status


def test_a_key_that_cannot_be_used_is_one_line(tiny_model, tmp_path):
    import os

    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = [
        (("--api-key", "a", "--api-key-file", str(empty)), {}, "both"),
        (("--api-key-file", str(empty)), {}, "no usable API key"),
        (("--api-key-file", str(tmp_path / "missing")), {}, "cannot read"),
        ((), {"GPT2_ONNX_API_KEY": ""}, "GPT2_ONNX_API_KEY"),
    ]
    for key, env, said in cases:
        run = subprocess.run(
            [sys.executable, "-c", cli_code(False), "serve", "--model", str(tiny_model), *key],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )
        assert run.returncode == 1 and run.stderr.count("\n") == 1 and said in run.stderr, run.stderr


# --- the prefix cache ---------------------------------------------------------------------------


def test_the_start_line_says_the_prefix_cache_is_on(tiny_model):
    from gpt2_onnx.generator import DEFAULT_PREFIX_CACHE_MB

    with running_server(tiny_model) as (_, proc):
        line = proc.stdout.readline()
    assert "(int8)" in line and line.rstrip().endswith(f"; prefix cache {DEFAULT_PREFIX_CACHE_MB:g} MB"), line


def test_int4_serves_without_a_prefix_cache_unless_one_is_asked_for(tiny_int4):
    from argparse import Namespace

    from fastapi.testclient import TestClient

    from gpt2_onnx.apps.serve import start_line
    from gpt2_onnx.apps.server import create_app
    from gpt2_onnx.apps.settings import ModelSettings, Settings

    loaded = []
    app = create_app(
        ModelSettings(str(tiny_int4), "int4", threads=1).load,
        Settings(MODEL),
        lambda service, error: loaded.append((service, error)),
    )
    with TestClient(app) as http:
        deadline = time.monotonic() + 60
        while http.get("/health").status_code != 200:
            assert time.monotonic() < deadline, loaded
            time.sleep(0.05)
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": "这是", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200
        service = loaded[0][0]
        assert service.generator.prefix_cache is None
        # built at load, not by the first constrained request in the event loop
        assert "grammar_vocab" in vars(service.generator)
        args = Namespace(host="127.0.0.1", port=8000, max_running=8, max_waiting=64)
        line = start_line(service, MODEL, args)
        assert line.endswith("; prefix cache off")
        # what the load-time probe decided for lone INT4 rows, as the decoder holds it
        alone = "alone (exact on this CPU)" if service.generator.decoder.min_rows == 1 else "beside 1 scratch row(s)"
        assert f"(int4; a lone row runs {alone}" in line, line
    asked = [
        sys.executable,
        "-c",
        cli_code(False),
        "serve",
        "--model",
        str(tiny_int4),
        "--precision",
        "int4",
        "--prefix-cache-mb",
        "8",
        "--port",
        str(free_port()),
    ]
    run = subprocess.run(asked, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert "int4 is not" in run.stderr and "--prefix-cache-mb 0" in run.stderr, run.stderr


# --- load --------------------------------------------------------------------------------------


def test_64_concurrent_streams_complete_and_metrics_agree(server):
    before = metrics(server)
    rng = random.Random(0)
    sizes = [rng.randint(3, 30) for _ in range(64)]

    def stream(max_tokens: int) -> tuple[int, int, bool]:
        body = {
            "model": MODEL,
            "prompt": "这是",
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", server + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r,
        ):
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        usage = json.loads(lines[-2][6:])["usage"]
        return r.status_code, usage["completion_tokens"], lines[-1] == "data: [DONE]"

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(stream, sizes))
    assert all(status == 200 and done for status, _, done in results)
    assert all(0 < tokens <= size for (_, tokens, _), size in zip(results, sizes))  # a stop token may end one early
    after = wait_for(server, idle)
    assert after["gpt2_onnx_generated_tokens_total"] - before["gpt2_onnx_generated_tokens_total"] == sum(
        t for _, t, _ in results
    )
    assert after["gpt2_onnx_requests_total"] - before["gpt2_onnx_requests_total"] == 64


def test_past_the_limits_only_429_and_successes(slow_server):
    """1 running + 2 waiting: of 12 simultaneous 30-token requests (0.6 s each here), the rest get 429 at once."""
    before = metrics(slow_server)
    barrier = threading.Barrier(12)

    def ask(_) -> int:
        barrier.wait(timeout=30)
        body = {"model": MODEL, "prompt": "这是", "max_tokens": 30, "temperature": 0}
        r = httpx.post(
            slow_server + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        )
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "rate_limit_error" and int(r.headers["Retry-After"]) >= 1
        return r.status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(ask, range(12)))
    assert set(statuses) <= {200, 429} and 1 <= statuses.count(200) and statuses.count(429) >= 12 - 3
    after = wait_for(slow_server, idle)
    assert after["gpt2_onnx_requests_rejected_total"] - before["gpt2_onnx_requests_rejected_total"] == statuses.count(
        429
    )


def test_a_closed_stream_is_cancelled_and_frees_its_slot(slow_server):
    client = openai.OpenAI(base_url=slow_server + "/v1", api_key=KEY, max_retries=0, timeout=60)
    before = metrics(slow_server)
    stream = client.completions.create(model=MODEL, prompt="这是", max_tokens=100, temperature=0, stream=True)
    for k, _ in enumerate(stream):
        if k == 2:
            break
    stream.close()
    after = wait_for(
        slow_server, lambda v: v["gpt2_onnx_requests_cancelled_total"] > before["gpt2_onnx_requests_cancelled_total"]
    )
    generated = after["gpt2_onnx_generated_tokens_total"] - before["gpt2_onnx_generated_tokens_total"]
    assert generated < 100  # stopped, not decoded to the end
    # the only running row was the cancelled one: a following request is admitted and completes
    out = client.completions.create(model=MODEL, prompt="今天", max_tokens=5, temperature=0)
    assert out.choices[0].finish_reason in ("length", "stop") and out.usage.completion_tokens >= 1
    assert idle(wait_for(slow_server, idle))


def test_a_client_leaving_a_plain_request_cancels_it(slow_server):
    before = metrics(slow_server)
    body = {"model": MODEL, "prompt": "这是", "max_tokens": 100, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # 100 steps take 2 s here: the client leaves after 0.3 s
        httpx.post(slow_server + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.3)
    after = wait_for(
        slow_server, lambda v: v["gpt2_onnx_requests_cancelled_total"] > before["gpt2_onnx_requests_cancelled_total"]
    )
    assert after["gpt2_onnx_generated_tokens_total"] - before["gpt2_onnx_generated_tokens_total"] < 100
    assert idle(wait_for(slow_server, idle))


def test_nothing_stays_occupied_after_bad_requests_and_cancellations(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    for body in (
        {"model": MODEL},
        {"model": MODEL, "prompt": "x", "n": 30, "temperature": 0},
        {"model": MODEL, "prompt": "x", "max_tokens": 999},
        {"model": MODEL, "prompt": "x", "logit_bias": {"100": 101}},
    ):
        assert httpx.post(server + "/v1/completions", json=body, headers=headers, timeout=10).status_code == 400
    values = wait_for(server, idle)
    assert values["gpt2_onnx_kv_reserved_positions"] == 0 and values["gpt2_onnx_batch_rows"] == 0


def test_sigterm_lets_the_running_request_finish_and_exits_0(tiny_model):
    with running_server(tiny_model, slow=True) as (url, proc):
        body = {"model": MODEL, "prompt": "这是", "max_tokens": 40, "temperature": 0, "stream": True}
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r,
        ):
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
        assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in (
            "length",
            "stop",
        )
        assert proc.wait(timeout=60) == 0


def test_a_grace_period_that_ends_closes_streams_with_an_error_event(tiny_model):
    """--grace-period 1 under 2.4 s answers: the streaming client gets an error chunk in OpenAI's shape
    (no [DONE]), the waiting one a 503 in that shape, the log holds no traceback, and the process exits 0."""
    with running_server(tiny_model, "--grace-period", "1", slow=True) as (url, proc), ThreadPoolExecutor(1) as pool:
        body = {"model": MODEL, "prompt": "这是", "max_tokens": 120, "min_new_tokens": 120, "temperature": 0}
        headers = {"Authorization": f"Bearer {KEY}"}
        plain = pool.submit(httpx.post, url + "/v1/completions", json=body, headers=headers, timeout=60)
        with (
            httpx.Client(timeout=60) as http,
            http.stream("POST", url + "/v1/completions", json={**body, "stream": True}, headers=headers) as r,
        ):
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            wait_for(url, lambda v: v["gpt2_onnx_requests_running"] + v["gpt2_onnx_requests_waiting"] == 2)
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
        error = json.loads(rest[-1][6:])["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "server_error"
        assert "data: [DONE]" not in rest
        answer = plain.result()
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "server_shutting_down"
        assert proc.wait(timeout=60) == 0
        _, log = proc.communicate(timeout=30)
        assert "Traceback" not in log and "CancelledError" not in log, log
