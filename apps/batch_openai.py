"""OpenAI's batch file format in `gpt2-onnx batch`: a request per input line, its answer per output line.

    {"custom_id", "method": "POST", "url", "body"}
        ─URLS[url](body): the server's own parsing (openai_api.completion_job, chat_job)─> Job
        ─> one engine request per prompt (n sequences each) ─> Choices ─openai_api.response─> body
        ─> {"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}

A request the server would refuse (a bad or unsupported body field, `stream`, an n past --max-running, a
prompt too long) is answered as OpenAI answers a failed request in a batch: the server's status and error
body in `response`. A line that is no request (not JSON, no custom_id or body, a duplicate custom_id, an
unknown method or url) and a decoding failure have `"response": null` and `"error": {"code", "message"}`.

An output line also carries `line`, the input line it answers, as every batch output row does: --resume
keys on it. custom_id could not be the key: a line that is not JSON, or has none, has no custom_id to
write, and a duplicate's is another line's. OpenAI's clients ignore a field they do not know.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpt2_onnx.engine import Event, Request
from gpt2_onnx.errors import GenerationOptionError, Gpt2OnnxError
from gpt2_onnx.generator import Generator

from .batch_io import LINE, InputRow, error_message
from .openai_api import (
    DEFAULT_CHAT_TEMPLATE,
    ApiError,
    Choice,
    Job,
    chat_job,
    check_n,
    completion_job,
    job_requests,
    prompt_texts,
    request_error,
    response,
)

# the endpoints a batch line may name → the server's parsing of its body (chat: the server's default template)
URLS: Mapping[str, Callable[[Any], Job]] = {
    "/v1/completions": completion_job,
    "/v1/chat/completions": lambda body: chat_job(body, DEFAULT_CHAT_TEMPLATE),
}
METHOD = "POST"


@dataclass
class _Call:
    """One line's request in the engine: its job, engine requests and choices so far."""

    row: InputRow
    job: Job
    piece: Callable[[int], str]  # a token's text, for log-probabilities
    requests: list[Request] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # per prompt, as echo shows it
    choices: list[Choice] = field(default_factory=list)
    remaining: int = 0  # choices not finished

    def on_event(self, prompt: int, event: Event) -> None:
        for index in self.job.choice_indices(prompt, event.slot):
            if self.choices[index].add(event, self.piece):
                self.remaining -= 1

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def output(self) -> dict[str, Any]:
        prompt_tokens = sum(len(r.prompt_ids) for r in self.requests)
        cached = sum(r.cached_tokens for r in self.requests)
        body = response(self.job, self.job.model, self.choices, self.texts, prompt_tokens, cached)
        return _answer(self.row, {"status_code": 200, "request_id": self.job.id, "body": body}, None)


def start(generator: Generator, row: InputRow, job_options: Mapping[str, Any], max_running: int) -> _Call:
    """A line's engine requests (not submitted), built as the server builds a call's; raises ApiError
    for what the server refuses, Gpt2OnnxError for a line that is no request. (`job_options` is empty:
    run_local refuses option flags for an OpenAI file.)"""
    if row.error is not None:
        raise Gpt2OnnxError(row.error)
    method, url = row.record.get("method"), row.record.get("url")
    if method != METHOD:
        raise Gpt2OnnxError(f'method must be "{METHOD}", got {method!r}')
    if url not in URLS:
        raise Gpt2OnnxError(f"unknown url {url!r}; a batch line asks one of {', '.join(URLS)}")
    job = URLS[url](row.record["body"])
    if job.stream:
        raise ApiError(400, "stream is not supported in a batch (each answer is written whole); remove it", "stream")
    check_n(job, max_running)
    call = _Call(row, job, generator.token_text)
    try:
        call.requests, call.texts = job_requests(generator, job, call.on_event), prompt_texts(generator, job)
    except GenerationOptionError as e:
        raise request_error(e) from None
    call.choices = [Choice() for _ in range(len(call.requests) * job.n)]
    call.remaining = len(call.choices)
    return call


def error_line(row: InputRow, error: Exception, while_decoding: bool = False) -> dict[str, Any]:
    """The output line of a line that failed: the server's status and error body for a request it
    refuses (the engine's refusals too: a prompt too long), an `error` for anything else."""
    if isinstance(error, GenerationOptionError) and not while_decoding:
        error = request_error(error)
    if isinstance(error, ApiError):
        return _answer(row, {"status_code": error.status, "request_id": uuid.uuid4().hex, "body": error.body()}, None)
    code = "decoding_failed" if while_decoding else "invalid_request"
    return _answer(row, None, {"code": code, "message": error_message(row, error, while_decoding)})


def outcome(out: Mapping[str, Any]) -> tuple[bool, int]:
    """An output line's (failed, new tokens)."""
    answer = out["response"]
    if out["error"] is not None or answer["status_code"] != 200:
        return True, 0
    return False, answer["body"]["usage"]["completion_tokens"]


def _answer(row: InputRow, answer: dict[str, Any] | None, error: dict[str, str] | None) -> dict[str, Any]:
    custom_id = (row.record or {}).get("custom_id")
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": answer,
        "error": error,
        LINE: row.line,
    }
