"""The README's table of the request fields of /v1/completions and /v1/chat/completions: every field the
parsers read (`openai_api.completion_job`, `chat_job`), with its default and meaning.

    option fields ─ the option table (`option_registry.OPTIONS`: each option's `body` field, its help;
                    defaults: OpenAI's where OpenAI defines the field, `openai_api.OPENAI_DEFAULTS`)
    constraint fields ─ `constraints.FORMS`
    the API's own fields ─ API_FIELDS below
    ─> `markdown_table`

`tests/test_server.py` holds the parsers to it: the fields they read for each endpoint are exactly the rows
this table gives that endpoint, so a field added to a parser without a row here (or the reverse) fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from gpt2_onnx.constraints import FORMS
from gpt2_onnx.option_registry import OPTIONS
from gpt2_onnx.options import GenerationConfig

from .openai_api import IGNORED_FIELDS, OPENAI_DEFAULTS

COMPLETIONS, CHAT = "completions", "chat"
BOTH = (COMPLETIONS, CHAT)


@dataclass(frozen=True)
class ApiField:
    """A body field: where it is read, its default in words, what it does."""

    name: str
    endpoints: tuple[str, ...]
    default: str
    what: str


API_FIELDS: tuple[ApiField, ...] = (
    ApiField("model", BOTH, "required", "the id `GET /v1/models` lists: `--model` as given, or `--model-name`"),
    ApiField(
        "prompt",
        (COMPLETIONS,),
        "required",
        "a string, a list of strings, a list of token ids or a list of such lists; token ids run as given "
        "(no [CLS] added)",
    ),
    ApiField(
        "messages",
        (CHAT,),
        "required",
        "`{role, content, name}` objects, each through `--chat-template` (default `{content}`), one line each, "
        "in order: one prompt; content is a string or a list of text parts; `name` changes nothing",
    ),
    ApiField(
        "max_completion_tokens",
        BOTH,
        "16",
        "chat's newer name for `max_tokens` (`max_tokens` wins when both are given)",
    ),
    ApiField("stream", BOTH, "false", "server-sent events: a chunk per text piece (never half a character), `[DONE]`"),
    ApiField("stream_options", BOTH, "{}", "`include_usage` (default false): a last chunk carrying `usage`"),
    ApiField("echo", (COMPLETIONS,), "false", "the prompt's text before the answer (not with `logprobs`)"),
    ApiField(
        "top_logprobs",
        (CHAT,),
        "0",
        "chat: how many alternatives each token's `logprobs` entry lists (with `logprobs: true`)",
    ),
    *(
        ApiField(name, BOTH, "none", "accepted and ignored: it labels a request and changes nothing generated")
        for name in IGNORED_FIELDS
    ),
)

# option fields whose meaning or default the API gives itself
_OPTION_NOTES = {
    "logprobs": ("none", "completions: the top-N alternatives per token (an int); chat: whether (true/false)"),
    "num_return_sequences": ("1", "choices per prompt, 1 to `--max-running`; greedy: one sequence fills them all"),
    "temperature": ("1.0", "sampling temperature; 0: greedy"),
}


def _runtime_default(name: str) -> str:
    """GenerationConfig's default, as JSON writes it (an empty list or null: none)."""
    value = next(f.default for f in fields(GenerationConfig) if f.name == name)
    return "none" if value in ((), None) else json.dumps(value)


def _option_rows() -> list[ApiField]:
    rows = []
    for o in OPTIONS:
        if o.body is None:
            continue
        default, what = _OPTION_NOTES.get(o.name, (None, o.help))
        if default is None:
            default = (
                json.dumps(OPENAI_DEFAULTS[o.name]) if o.name in OPENAI_DEFAULTS else f"{_runtime_default(o.name)}*"
            )
        rows.append(ApiField(o.body, BOTH, default, what))
    return rows


def _constraint_rows() -> list[ApiField]:
    by_field: dict[str, list[str]] = {}
    for form in FORMS:
        by_field.setdefault(form.body, []).append(f"{form.help} (`{form.name}`)")
    return [
        ApiField(
            name,
            BOTH,
            "none",
            "structured output (one such field per request): "
            + (
                '`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"name", '
                '"schema", "strict", "description"}}`'
                if name == "response_format"
                else "; ".join(forms)
            ),
        )
        for name, forms in by_field.items()
    ]


def api_fields() -> list[ApiField]:
    """Every request field, the API's own first, then the options', then the constraints'."""
    return [*API_FIELDS, *_option_rows(), *_constraint_rows()]


def markdown_table() -> str:
    """The README's field table (its Serve section)."""
    lines = ["| field | endpoints | default | what |", "| --- | --- | --- | --- |"]
    for f in api_fields():
        where = "both" if f.endpoints == BOTH else f.endpoints[0]
        lines.append(f"| `{f.name}` | {where} | {f.default} | {f.what} |")
    return "\n".join(lines) + "\n"
