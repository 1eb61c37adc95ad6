"""OpenAI's HTTP API shapes: request bodies → a `Job` (prompts + runtime options), and the
response, chunk and error bodies built from the runtime's events.

The option fields are the option table's (`gpt2_onnx.option_registry`: each option's `body`
field). Defaults follow OpenAI, not the model's manifest, for the fields OpenAI defines
(OPENAI_DEFAULTS): max_tokens 16, temperature 1.0 (so sampling: do_sample is
`temperature > 0`), top_p 1.0, top_k 0 (off; OpenAI has none); the other option fields keep
the runtime's names and, when absent, the manifest's defaults. An option error answers with
the field of the option it names (`GenerationOptionError.option`), never by reading its message.
Token counts include the family's prompt prefix ([CLS] for uer), as the runtime counts them; a prompt given
as token ids runs as given (no prefix added, as vLLM does), and `usage.prompt_tokens_details.cached_tokens`
counts the prompt tokens the prefix cache supplied.

A body field the parser never reads is refused (400 naming it), so a client asking for a feature this server
lacks (`tools`, `best_of`, a typo) is told rather than ignored; IGNORED_FIELDS are the OpenAI fields that
change nothing generated and are accepted. `n` with temperature 0 decodes its prompt once: the n greedy
sequences are identical, so one engine sequence fills n choices (`Job.copies`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from gpt2_onnx.errors import ContextLengthError, GenerationOptionError
from gpt2_onnx.option_registry import (
    BOOL,
    CHOICE,
    FLOAT,
    ID_MAP,
    IDS,
    INT,
    OPTIONS,
    TEXTS,
    WORDS,
    Option,
    body_field,
    is_int,
)

from .api_fields import BOOL as _BOOL
from .api_fields import INT as _INT
from .api_fields import NUMBER as _NUMBER
from .api_fields import OBJECT as _OBJECT
from .api_fields import SHOWN as _SHOWN
from .api_fields import STR as _STR
from .api_fields import ApiError, object_body, utf8
from .api_fields import Fields as _Fields
from .api_fields import get as _get
from .guided import constraint_option

if TYPE_CHECKING:  # only for annotations: the API's shapes need no engine
    from gpt2_onnx.engine import Event

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# option → OpenAI's default for the field that sets it (absent, other option fields take the manifest's defaults)
OPENAI_DEFAULTS = {"max_new_tokens": DEFAULT_MAX_TOKENS, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
DEFAULT_CHAT_TEMPLATE = "{content}"  # one line per message, in order: GPT-2 is no chat model

# an OpenAI finish reason per runtime finish reason (a stop string is a stop, as in OpenAI); the engine's
# "error" is no finish reason here: the call fails (`engine_failed`)
FINISH_REASONS = {"stop": "stop", "stop_string": "stop", "length": "length", "cancelled": "stop"}
# options no body field of their own sets: the field that decides them, for errors naming it
SET_BY = {"do_sample": "temperature"}
# engine settings a request may exceed → the server flag that sets them (the engine's max_rows is --max-running)
SERVER_FLAGS = {"max_rows": "--max-running"}


@dataclass(frozen=True)
class Job:
    """One API call: its prompts (texts, or token ids run as given) and the runtime options every prompt runs with."""

    chat: bool
    model: str
    prompts: tuple[str | tuple[int, ...], ...]
    options: Mapping[str, Any]  # GenerationConfig fields
    n: int
    stream: bool
    include_usage: bool
    echo: bool = False
    logprobs: int | None = None  # top-N per token (None: not asked for)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def copies(self) -> int:
        """Choices one engine sequence fills: n when greedy (n identical sequences, decoded once), else 1."""
        return self.n // self.options["num_return_sequences"]

    def choice_indices(self, prompt: int, slot: int) -> range:
        """The choices sequence `slot` of prompt `prompt`'s request fills (choice i*n + j is prompt i's sequence j)."""
        first = prompt * self.n + slot * self.copies
        return range(first, first + self.copies)


def check_n(job: Job, max_running: int) -> None:
    """400 for an n outside 1..max_running (greedy n takes one row, but is held to what sampling takes)."""
    if not 1 <= job.n <= max_running:
        raise ApiError(
            400,
            f"n must be from 1 to {max_running} (the sequences this server decodes at once, its --max-running), "
            f"got {job.n}",
            "n",
            "invalid_value",
        )


def engine_failed() -> ApiError:
    """The call's answer when the engine failed in a step its requests were in (the server log has why)."""
    return ApiError(
        500,
        "the engine failed while generating this answer (the server's log has the cause); retry",
        None,
        "engine_error",
        "server_error",
    )


# --- reading bodies ---------------------------------------------------------------------------

# OpenAI fields accepted and ignored: they label a request and change nothing generated
IGNORED_FIELDS = {"user": _STR, "metadata": _OBJECT}


_LISTS = {  # a list option's kind → (what each entry may be, the field's type in words)
    TEXTS: (lambda v: isinstance(v, str), "a string or a list of strings"),
    IDS: (is_int, "a list of token ids"),
    WORDS: (lambda v: isinstance(v, (str, list)), "a list of strings or of token-id lists"),
}
# the JSON type of every other kind's field (an id map: an object; the runtime reads its string keys)
_SCALARS = {INT: _INT, FLOAT: _NUMBER, BOOL: _BOOL, CHOICE: _STR, ID_MAP: _OBJECT}
# options whose fields have OpenAI's own meaning: read by `_options` itself, not as plain option fields
_EXPLICIT = frozenset({"max_new_tokens", "do_sample", "temperature", "num_return_sequences", "logprobs"})
_PLAIN = tuple(o for o in OPTIONS if o.body is not None and o.name not in _EXPLICIT)


def _option(body: _Fields, option: Option) -> Any:
    """The value of a plain option field: of the option's type (ranges are checked by the runtime)."""
    default = OPENAI_DEFAULTS.get(option.name)
    if option.kind not in _LISTS:
        return _get(body, option.body, _SCALARS[option.kind], default)
    value = body.get(option.body)
    entry_ok, kind = _LISTS[option.kind]
    if value is None:
        return default
    if isinstance(value, str) and option.kind == TEXTS:
        return [value]
    if isinstance(value, list) and all(map(entry_ok, value)):
        return value
    raise ApiError(400, f"{option.body} must be {kind}, got {_SHOWN.repr(value)}", option.body, "invalid_type")


def _options(body: _Fields, n: int, logprobs: int | None) -> dict[str, Any]:
    """The runtime options of a completion or chat body: the plain option fields, then those with
    OpenAI's meaning. Greedy decoding (temperature 0) runs one sequence for the n identical ones asked for."""
    options = {o.name: _option(body, o) for o in _PLAIN}
    temperature = _get(body, body_field("temperature"), _NUMBER, OPENAI_DEFAULTS["temperature"])
    sampling = temperature > 0
    max_tokens = _get(body, "max_completion_tokens", _INT, OPENAI_DEFAULTS["max_new_tokens"])  # chat's newer name
    return {
        **options,
        "max_new_tokens": _get(body, body_field("max_new_tokens"), _INT, max_tokens),
        "do_sample": sampling,
        "temperature": temperature,
        "num_return_sequences": n if sampling else 1,
        "logprobs": logprobs,
        "constraint": constraint_option(body),
    }


def _common(raw: Any) -> tuple[_Fields, str, int, bool, bool]:
    body = object_body(raw)
    model = _get(body, "model", _STR)
    if model is None:
        raise ApiError(400, "model is required: pass the id listed by GET /v1/models", "model", "missing_field")
    for name, kinds in IGNORED_FIELDS.items():
        _get(body, name, kinds)
    options = _Fields(_get(body, "stream_options", _OBJECT, {}), "stream_options.")
    usage = bool(_get(options, "include_usage", _BOOL, False))
    options.refuse_unread()
    n = _get(body, body_field("num_return_sequences"), _INT, 1)
    return body, model, n, bool(_get(body, "stream", _BOOL, False)), usage


def completion_job(raw: Any) -> Job:
    """A /v1/completions body → its Job (400 naming the field for a wrong type or an unsupported field)."""
    body, model, n, stream, usage = _common(raw)
    prompts = _prompts(body.get("prompt"))
    logprobs = _get(body, body_field("logprobs"), _INT)
    echo = bool(_get(body, "echo", _BOOL, False))
    if echo and logprobs:
        raise ApiError(
            400, "echo with logprobs is not supported (prompt tokens have no log-probabilities here); drop one", "echo"
        )
    options = _options(body, n, logprobs)
    body.refuse_unread()
    return Job(False, model, prompts, options, n, stream, usage, echo, logprobs)


def _prompts(prompt: Any) -> tuple[str | tuple[int, ...], ...]:
    """OpenAI's four prompt shapes: a string, a list of strings, a list of token ids (one prompt), a list
    of such lists (the ids' range is the model's to check)."""
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return tuple(prompt)
        if all(map(is_int, prompt)):
            return (tuple(prompt),)
        if all(isinstance(p, list) and p and all(map(is_int, p)) for p in prompt):
            return tuple(map(tuple, prompt))
    raise ApiError(
        400,
        "prompt must be a string, a non-empty list of strings, a non-empty list of token ids or a list of "
        f"such lists, got {_SHOWN.repr(prompt)}",
        "prompt",
        "invalid_type",
    )


def chat_job(raw: Any, template: str) -> Job:
    """A /v1/chat/completions body → its Job: each message through `template` ({role},
    {content}), one per line, in order, is the prompt."""
    body, model, n, stream, usage = _common(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400,
            f"messages must be a non-empty list of {{role, content}} objects, got {_SHOWN.repr(messages)}",
            "messages",
            "invalid_type",
        )
    lines = [template.format(role=m.get("role", ""), content=_content(m, i)) for i, m in enumerate(messages)]
    top = _get(body, "top_logprobs", _INT, 0)
    wanted = _get(body, body_field("logprobs"), _BOOL, False)  # chat's logprobs: whether, top_logprobs: how many
    # the runtime returns the chosen token's log-probability only beside a top-N of N ≥ 1
    options = _options(body, n, max(top, 1) if wanted else None)
    body.refuse_unread()
    return Job(True, model, ("\n".join(lines),), options, n, stream, usage, False, top if wanted else None)


def _content(message: Any, i: int) -> str:
    """A message's text; its `name` (OpenAI's participant name) is read and changes nothing, any other
    field (`tool_calls`, a typo) is a 400 naming it, as in the body."""
    param = f"messages[{i}].content"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(
            400,
            f"messages[{i}] must be an object with a string role, got {_SHOWN.repr(message)}",
            f"messages[{i}]",
            "invalid_type",
        )
    fields = _Fields(message, f"messages[{i}].")
    fields.get("role")
    if not isinstance(fields.get("name"), str | None):
        raise ApiError(400, f"messages[{i}].name must be a string", f"messages[{i}].name", "invalid_type")
    content = fields.get("content")
    fields.refuse_unread()
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(
            400, f"{param} must be a string or a list of text parts, got {_SHOWN.repr(content)}", param, "invalid_type"
        )
    utf8(content, param)
    return content


def request_error(error: GenerationOptionError) -> ApiError:
    """A request the runtime refused, as a 400 naming the body field of the option it concerns: a
    prompt that cannot fit (with max_tokens) is `context_length_exceeded` on `prompt`. A remedy is
    spelled as a body field; an engine limit the request exceeds is named by the server flag that sets it."""
    message = error.spelled(lambda option, value: f"{body_field(option) or option}={json.dumps(value)}")
    if error.limit is not None and error.limit[0] in SERVER_FLAGS:
        message += f" (this server's {SERVER_FLAGS[error.limit[0]]} is {error.limit[1]})"
    param = SET_BY.get(error.option) or body_field(error.option)
    code = "context_length_exceeded" if isinstance(error, ContextLengthError) else "invalid_value"
    return ApiError(400, message, param, code)


# --- writing responses ------------------------------------------------------------------------


@dataclass
class Choice:
    """What one returned sequence has produced so far."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[tuple[str, float, list[tuple[str, float]]]] = field(default_factory=list)  # (token, lp, top)

    def add(self, event: Event, piece: Callable[[int], str]) -> bool:
        """The event's text, tokens and log-probabilities (tokens spelled by `piece`) appended;
        whether it finished this choice."""
        self.text += event.text
        self.tokens += len(event.tokens)
        for token, (logprob, top) in zip(event.tokens, event.logprobs or ()):
            self.logprobs.append((piece(token), logprob, [(piece(t), lp) for t, lp in top]))
        if event.finish_reason:
            self.finish_reason = event.finish_reason
        return bool(event.finish_reason)


def job_requests(generator, job: Job, on_event: Callable[[int, Event], None]) -> list:
    """The engine requests of a job's prompts, as the server and a batch line build them: text encoded as
    generate() encodes it, token ids run as given (checked against the vocabulary); `on_event(prompt, event)`.
    Raises GenerationOptionError for bad options or ids. (`generator`: a gpt2_onnx Generator.)"""
    config = generator.config(**job.options)
    ids = [generator.encode(p) if isinstance(p, str) else generator.check_ids(p, "prompt") for p in job.prompts]
    return [generator.request(p, config, partial(on_event, i)) for i, p in enumerate(ids)]


def prompt_texts(generator, job: Job) -> list[str]:
    """Each prompt's text as echo shows it (token ids decoded)."""
    return [p if isinstance(p, str) else generator.decode(p) for p in job.prompts]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """`cached_tokens`: prompt tokens the prefix cache supplied (whole blocks), counted in prompt_tokens too."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _completion_logprobs(entries: Sequence[tuple[str, float, list[tuple[str, float]]]], offset: int) -> dict[str, Any]:
    offsets, at = [], offset
    for token, _, _ in entries:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": [t for t, _, _ in entries],
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [dict(top) for _, _, top in entries],
        "text_offset": offsets,
    }


def _chat_logprobs(entries: Sequence[tuple[str, float, list[tuple[str, float]]]], top_n: int) -> dict[str, Any]:
    def item(token: str, lp: float) -> dict[str, Any]:
        return {"token": token, "logprob": lp, "bytes": list(token.encode())}

    return {
        "content": [{**item(t, lp), "top_logprobs": [item(a, b) for a, b in top[:top_n]]} for t, lp, top in entries]
    }


def _choice_body(job: Job, index: int, text: str, reason: str | None, entries, offset: int = 0) -> dict[str, Any]:
    logprobs = None
    if job.logprobs is not None:
        logprobs = _chat_logprobs(entries, job.logprobs) if job.chat else _completion_logprobs(entries, offset)
    finish = FINISH_REASONS.get(reason) if reason else None
    if job.chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish,
        }
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def response(
    job: Job, model: str, choices: Sequence[Choice], echoed: Sequence[str], prompt_tokens: int, cached_tokens: int
) -> dict[str, Any]:
    """The non-streamed response body; choice i*n + j is prompt i's sequence j (after `echoed[i]`, prompt i's
    text, with echo)."""
    bodies = []
    for index, choice in enumerate(choices):
        prefix = echoed[index // job.n] if job.echo else ""
        bodies.append(
            _choice_body(job, index, prefix + choice.text, choice.finish_reason, choice.logprobs, len(prefix))
        )
    return {
        **_envelope(job, model, streamed=False),
        "choices": bodies,
        "usage": usage(prompt_tokens, sum(c.tokens for c in choices), cached_tokens),
    }


def chunk(
    job: Job, model: str, index: int, text: str, reason: str | None, entries, offset: int = 0, first: bool = False
) -> dict[str, Any]:
    """One streamed chunk of choice `index`."""
    body = _choice_body(job, index, text, reason, entries, offset)
    if job.chat:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        body = {"index": index, "delta": delta, "logprobs": body["logprobs"], "finish_reason": body["finish_reason"]}
    out = {**_envelope(job, model, streamed=True), "choices": [body]}
    if job.include_usage:
        out["usage"] = None
    return out


def usage_chunk(job: Job, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The last chunk with stream_options.include_usage: no choices, the whole call's usage."""
    body = usage(prompt_tokens, completion_tokens, cached_tokens)
    return {**_envelope(job, model, streamed=True), "choices": [], "usage": body}


def _envelope(job: Job, model: str, streamed: bool) -> dict[str, Any]:
    """The fields every response body and chunk of a call share."""
    kind = ("chat.completion.chunk" if streamed else "chat.completion") if job.chat else "text_completion"
    return {
        "id": ("chatcmpl-" if job.chat else "cmpl-") + job.id,
        "object": kind,
        "created": job.created,
        "model": model,
    }
