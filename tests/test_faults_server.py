"""The server under faults, at scale (issue 20): an in-process uvicorn on 127.0.0.1 and 32 concurrent
clients (most streaming), while requests with every kind of bad body arrive, some clients leave mid-stream, and the
engine raises inside one step (monkeypatched). Every good answer is what its prompt gives alone, or,
if its request was in the failing step, an error in OpenAI's shape (an SSE error chunk, or a 500),
never silence; every bad request is a 4xx in OpenAI's shape; the log holds no error but the injected
one; the process's RSS after 1,000 requests is within 15 % of its RSS after warm-up."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from gpt2_onnx.benchmarks.serve_bench import free_port

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

MODEL, KEY = "tiny", "fault-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CLIENTS = 32
PROMPTS = ("这是", "今天天气", "很久很久以前", "北京", "我们", "一个人", "你好", "春天来了")
MAX_TOKENS = (2, 4, 6)
LEAVER_TOKENS = 60  # more than any good request asks for: tells a leaver's engine request apart
WARM_UP, REQUESTS = 200, 1000
RSS_GROWTH = 1.15
TIMEOUT_S = 30  # a request takes milliseconds here: one with no answer by then is lost


# --- what is sent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    """A greedy request whose answer is known: streamed or not, completion or chat."""

    prompt: str
    max_tokens: int
    stream: bool
    chat: bool


@dataclass(frozen=True)
class Leaver:
    """A streaming client that disconnects after its first chunk."""

    prompt: str


@dataclass(frozen=True)
class Bad:
    """A request the server must refuse: `status`, and the `param` its error names (when not None)."""

    name: str
    path: str
    content: bytes
    status: int
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = (("Authorization", f"Bearer {KEY}"),)


def _json(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def bad_requests() -> list[Bad]:
    """Every bad body issue 20 names, and the older kinds of bad input beside them."""
    base = {"model": MODEL, "prompt": "这是", "max_tokens": 2}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "这是"}], "max_tokens": 2}
    unsupported = [
        Bad(field, "/v1/completions", _json({**base, field: value}), 400, field)
        for field, value in (("tool_choice", "auto"), ("best_of", 2), ("suffix", "。"), ("temprature", 0))
    ]
    nested = b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # 200 KB
    return [
        *unsupported,
        Bad("tools", "/v1/chat/completions", _json({**chat, "tools": [{"type": "function"}]}), 400, "tools"),
        Bad("nested JSON", "/v1/completions", nested, 400),
        Bad("malformed JSON", "/v1/completions", b'{"model": "tiny", "prompt": ', 400),
        Bad("wrong type", "/v1/completions", _json({**base, "max_tokens": "many"}), 400, "max_tokens"),
        Bad("n past --max-running", "/v1/completions", _json({**base, "n": 50, "temperature": 0}), 400, "n"),
        Bad("too long", "/v1/completions", _json({**base, "max_tokens": 5000}), 400, "prompt"),
        Bad("lone surrogate", "/v1/completions", b'{"model": "tiny", "prompt": "\\udcff"}', 400),
        Bad("unknown model", "/v1/completions", _json({**base, "model": "gpt-4"}), 404, "model"),
        Bad("no key", "/v1/completions", _json(base), 401, headers=()),
        Bad("too large", "/v1/completions", _json({**base, "prompt": "a" * 2**20}), 413),  # the limit: 1 MB
    ]


def workload(count: int, rng: random.Random) -> list[Good | Leaver | Bad]:
    """`count` requests: about 80 % good (most streamed), 5 % leaving clients, 15 % bad, shuffled."""
    bad = bad_requests()
    items: list[Good | Leaver | Bad] = []
    for k in range(count):
        roll = rng.random()
        if roll < 0.15:
            items.append(bad[k % len(bad)])
        elif roll < 0.20:
            items.append(Leaver(rng.choice(PROMPTS)))
        else:
            items.append(
                Good(rng.choice(PROMPTS), rng.choice(MAX_TOKENS), stream=rng.random() < 0.75, chat=rng.random() < 0.25)
            )
    return items


# --- what comes back ---------------------------------------------------------------------------


def is_openai_error(body: object) -> bool:
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and set(body["error"]) == {"message", "type", "param", "code"}
        and bool(body["error"]["message"])
    )


async def send(http: httpx.AsyncClient, url: str, item: Good | Leaver | Bad) -> tuple[str, object]:
    """('text', text) for a complete good answer, ('error', (status, or None if streamed, body)) for a
    failed one, ('lost', why) for one that ended otherwise or never, ('left', None) for a leaver,
    ('refused', (status, body)) for a bad one."""
    try:
        return await _send(http, url, item)
    except httpx.ReadTimeout:
        return "lost", f"no answer within {TIMEOUT_S} s"


async def _send(http: httpx.AsyncClient, url: str, item: Good | Leaver | Bad) -> tuple[str, object]:
    if isinstance(item, Bad):
        r = await http.post(url + item.path, content=item.content, headers=dict(item.headers))
        return "refused", (r.status_code, r.json())
    if isinstance(item, Leaver):
        body = {"model": MODEL, "prompt": item.prompt, "max_tokens": LEAVER_TOKENS, "temperature": 0, "stream": True}
        async with http.stream("POST", url + "/v1/completions", json=body, headers=AUTH) as r:
            async for _ in r.aiter_lines():
                break  # the client goes away mid-stream: the response is closed unread
        return "left", None
    body = {"model": MODEL, "max_tokens": item.max_tokens, "temperature": 0, "stream": item.stream}
    body.update({"messages": [{"role": "user", "content": item.prompt}]} if item.chat else {"prompt": item.prompt})
    path = "/v1/chat/completions" if item.chat else "/v1/completions"
    if not item.stream:
        r = await http.post(url + path, json=body, headers=AUTH)
        if r.status_code != 200:
            return "error", (r.status_code, r.json())
        choice = r.json()["choices"][0]
        return "text", choice["message"]["content"] if item.chat else choice["text"]
    text, finished = "", False
    async with http.stream("POST", url + path, json=body, headers=AUTH) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return ("text", text) if finished else ("lost", "[DONE] before a finish_reason")
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return "error", (None, chunk)  # the status (200) was sent with the first chunk
            choice = chunk["choices"][0]
            text += (choice["delta"].get("content") or "") if item.chat else choice["text"]
            finished = finished or choice["finish_reason"] is not None
    return "lost", f"the stream ended without [DONE] or an error after {text!r}"


async def run_all(url: str, items: list[Good | Leaver | Bad], on_progress=None) -> list[tuple[str, object]]:
    """Send `items` from CLIENTS concurrent clients, each taking the next item when done."""
    results: list[tuple[str, object] | None] = [None] * len(items)
    queue = iter(range(len(items)))
    limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as http:

        async def client() -> None:
            for k in queue:
                results[k] = await send(http, url, items[k])
                if on_progress:
                    on_progress(k)

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return results


# --- the server --------------------------------------------------------------------------------


class FailOnce:
    """Makes the engine raise once, when armed, inside `Engine.step` after its model calls ran (as its
    commit begins), in a step with rows decoding and a prompt whose prefill just completed."""

    def __init__(self, engine):
        self.engine, self.commit = engine, engine._commit
        self.armed, self.fired = threading.Event(), False
        engine._commit = self._committed  # the instance's own method only

    def _committed(self, plan, logits):
        completes = any(w.chooses and w.active.new_tokens == 0 for w in plan.works)  # a prompt's last chunk
        decodes = any(w.active.new_tokens > 0 for w in plan.works)
        if self.armed.is_set() and not self.fired and completes and decodes:
            self.fired = True
            raise RuntimeError("injected engine fault")
        return self.commit(plan, logits)


@contextmanager
def in_process_server(model_dir):
    """uvicorn on a free loopback port in a thread of this process: its URL and the Service."""
    from gpt2_onnx import Generator
    from gpt2_onnx.apps.bridge import Capacity
    from gpt2_onnx.apps.server import Settings, create_app

    loaded: dict = {}
    ready = threading.Event()

    def on_load(service, error):
        loaded.update(service=service, error=error)
        ready.set()

    generator = Generator.load(model_dir, precision="int8", threads=1)
    app = create_app(generator, Settings(MODEL, Capacity(max_running=8, max_waiting=64), KEY), on_load)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert ready.wait(120) and loaded["service"] is not None, loaded
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        yield url, loaded["service"]
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb * 1024


# --- the test ----------------------------------------------------------------------------------


def test_faults_under_load_lose_nothing_and_leak_nothing(tiny_model, generators, caplog, capfd, monkeypatch):
    from gpt2_onnx.apps import bridge
    from gpt2_onnx.engine import FINISH_ERROR

    failed_calls = []  # the calls the engine ended with an error event (the requests of the failing step)
    on_event = bridge.Call._on_event

    def noting_errors(call, i, event):
        if event.finish_reason == FINISH_ERROR:
            failed_calls.append(call)
        on_event(call, i, event)

    monkeypatch.setattr(bridge.Call, "_on_event", noting_errors)
    reference = generators(tiny_model, "int8")
    expected = {
        (p, m, chat): reference.generate(p, max_new_tokens=m, do_sample=False).text
        for p in PROMPTS
        for m in MAX_TOKENS
        for chat in (False, True)
    }  # the default chat template: {content}
    rng = random.Random(20)
    warm_up, items = workload(WARM_UP, rng), workload(REQUESTS, rng)
    caplog.set_level(logging.WARNING)
    with in_process_server(tiny_model) as (url, service):
        fault = FailOnce(service.engine)
        asyncio.run(run_all(url, warm_up))
        before = rss_bytes()

        def arm(k: int) -> None:
            if k >= REQUESTS // 3:  # mid-run, while the 32 clients keep the engine full
                fault.armed.set()

        results = asyncio.run(run_all(url, items, arm))
        after = rss_bytes()
        outcomes = Counter(kind for kind, _ in results)
        assert outcomes["lost"] == 0, [(i, r) for i, r in zip(items, results) if r[0] == "lost"][:3]
        deadline = time.monotonic() + 30  # the leavers' cancellations take effect at a step boundary
        while service.in_flight or service.engine.has_work:
            assert time.monotonic() < deadline, (service.in_flight, service.stats())
            time.sleep(0.05)
    assert fault.fired
    errors = [value for kind, value in results if kind == "error"]
    listening = {id(c) for c in failed_calls if c.job.options["max_new_tokens"] != LEAVER_TOKENS}
    assert len(errors) == len(listening) >= 1  # each good request of the failing step heard of it; no other did
    for status, body in errors:
        assert status in (None, 500) and is_openai_error(body) and body["error"]["code"] == "engine_error", body
    for item, (kind, value) in zip(items, results):
        if isinstance(item, Good) and kind == "text":
            assert value == expected[item.prompt, item.max_tokens, item.chat], item
        if isinstance(item, Bad):
            status, body = value
            assert kind == "refused" and status == item.status and is_openai_error(body), (item.name, status, body)
            if item.param is not None:
                assert body["error"]["param"] == item.param, (item.name, body)
    assert outcomes["text"] + len(errors) == sum(isinstance(i, Good) for i in items)

    assert after <= before * RSS_GROWTH, f"RSS grew from {before / 2**20:.0f} MB to {after / 2**20:.0f} MB"
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged == [], logged
    stderr = capfd.readouterr().err
    assert stderr.count("Traceback") == 1 and "injected engine fault" in stderr, stderr[-3000:]
