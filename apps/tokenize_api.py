"""/tokenize and /detokenize: llama-server's and vLLM's shapes at once, read from a body and answered.

/tokenize takes the text as `content` (llama-server) or `prompt` (vLLM); each client's own flag adds the family's
prefix ([CLS]) with that client's default. /detokenize answers the text under both clients' names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpt2_onnx.option_registry import is_int

from .api_fields import BOOL, SHOWN, STR, ApiError, get, object_body, utf8

# /tokenize: the field holding the text → the field that adds the family's prefix ([CLS]) and its default, each
# client's own (llama-server: `content`, `add_special` false; vLLM: `prompt`, `add_special_tokens` true)
TOKENIZE_SHAPES = {"content": ("add_special", False), "prompt": ("add_special_tokens", True)}


@dataclass(frozen=True)
class TokenizeJob:
    """A /tokenize body: the text, whether the prefix is added, and how the answer lists the tokens."""

    model: str | None
    text: str
    add_special: bool
    with_pieces: bool  # llama-server: each token as {"id", "piece"}
    token_strs: bool  # vLLM's return_token_strs: the pieces beside the ids


def tokenize_job(raw: Any) -> TokenizeJob:
    """A /tokenize body → its job: the text in `content` or `prompt` (one of them), `add_special` or
    `add_special_tokens` (either name; absent: the default of the client whose text field was used),
    `with_pieces`, `return_token_strs`, `model` (optional, as in vLLM)."""
    body = object_body(raw)
    model = get(body, "model", STR)
    given = [name for name in TOKENIZE_SHAPES if body.get(name) is not None]
    if len(given) != 1:
        raise ApiError(
            400,
            "send the text as `content` (llama-server's name) or `prompt` (vLLM's), "
            + ("not both" if given else "a string"),
            given[-1] if given else "content",
            "invalid_value" if given else "missing_field",
        )
    name = given[0]
    text = get(body, name, STR)
    utf8(text, name)
    flags = {field: get(body, field, BOOL) for field, _ in TOKENIZE_SHAPES.values()}
    if None not in flags.values() and len(set(flags.values())) > 1:
        raise ApiError(
            400, "add_special and add_special_tokens disagree; send one", "add_special_tokens", "invalid_value"
        )
    add_special = next((v for v in flags.values() if v is not None), TOKENIZE_SHAPES[name][1])
    with_pieces = bool(get(body, "with_pieces", BOOL, False))
    token_strs = bool(get(body, "return_token_strs", BOOL, False))
    body.refuse_unread()
    return TokenizeJob(model, text, add_special, with_pieces, token_strs)


def detokenize_job(raw: Any) -> tuple[str | None, list[int]]:
    """A /detokenize body → (model or None, the token ids): `tokens`, `model` optional (their range is the
    model's to check)."""
    body = object_body(raw)
    model = get(body, "model", STR)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(map(is_int, tokens)):
        raise ApiError(400, f"tokens must be a list of token ids, got {SHOWN.repr(tokens)}", "tokens", "invalid_type")
    body.refuse_unread()
    return model, tokens


def tokenize_response(job: TokenizeJob, ids: Sequence[int], pieces: Sequence[str], max_model_len: int) -> dict:
    """Both clients' answer: `tokens` (ids; with `with_pieces`, llama-server's {"id", "piece"} objects), vLLM's
    `count` and `max_model_len`, and its `token_strs` when asked. A piece is the token's text as logprobs show it."""
    tokens = [{"id": t, "piece": p} for t, p in zip(ids, pieces)] if job.with_pieces else list(ids)
    body = {"tokens": tokens, "count": len(ids), "max_model_len": max_model_len}
    return {**body, "token_strs": list(pieces)} if job.token_strs else body


def detokenize_response(text: str) -> dict[str, str]:
    """The text under both clients' names: llama-server's `content`, vLLM's `prompt`."""
    return {"content": text, "prompt": text}
