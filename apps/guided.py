"""Structured output in a request body → the runtime's `constraint` option.

OpenAI's `response_format` ({"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema":
{"name", "schema", "strict", "description"}}) and vLLM's `guided_regex`, `guided_choice`, `guided_grammar` (Lark),
at most one of them. The fields are the constraint forms' (gpt2_onnx.constraints.FORMS); whether a schema, regex or
grammar is valid for this model is the runtime's to say, and its error names the field here too.
"""

from __future__ import annotations

from typing import Any

from gpt2_onnx.constraints import FORMS

from .api_fields import BOOL, OBJECT, SHOWN, STR, ApiError, Fields, get

RESPONSE_FORMAT = "response_format"
_GUIDED = {f.body: f.name for f in FORMS if f.body != RESPONSE_FORMAT}  # guided_regex → regex, ...


def constraint_option(body: Fields) -> dict[str, Any] | None:
    """The constraint the body asks for, as the runtime takes it ({form: value}), or None; a 400 naming the
    field for a value of the wrong shape, or for two fields that both constrain the text."""
    given = {}
    response_format = _response_format(body)
    if response_format is not None:
        given[RESPONSE_FORMAT] = response_format
    for field, form in _GUIDED.items():
        value = body.get(field)
        if value is not None:
            given[field] = {form: _guided(field, form, value)}
    if len(given) > 1:
        first, second = list(given)[:2]
        raise ApiError(400, f"{second} and {first} both constrain the text; give one of them", second, "invalid_value")
    return next(iter(given.values()), None)


def _response_format(body: Fields) -> dict[str, Any] | None:
    fields = Fields(get(body, RESPONSE_FORMAT, OBJECT, {}), RESPONSE_FORMAT + ".")
    if not fields.values:
        return None
    kind = get(fields, "type", STR)
    if kind == "json_schema":
        spec = Fields(get(fields, "json_schema", OBJECT, {}), RESPONSE_FORMAT + ".json_schema.")
        schema = get(spec, "schema", OBJECT)
        get(spec, "name", STR)  # labels: read so that they are accepted; they change nothing generated
        get(spec, "description", STR)
        get(spec, "strict", BOOL)  # the schema is always enforced, as with strict true
        spec.refuse_unread()
        if schema is None:
            raise ApiError(
                400,
                "response_format.json_schema.schema is required with type json_schema: the JSON schema of the answer",
                RESPONSE_FORMAT,
                "missing_field",
            )
        result = {"json_schema": schema}
    elif kind in ("json_object", "text"):
        result = {"json_object": True} if kind == "json_object" else None
    else:
        raise ApiError(
            400,
            f"response_format.type must be 'text', 'json_object' or 'json_schema', got {SHOWN.repr(kind)}",
            RESPONSE_FORMAT,
            "invalid_value",
        )
    fields.refuse_unread()
    return result


def _guided(field: str, form: str, value: Any) -> Any:
    """A guided field's value of the right JSON type: a list of strings (guided_choice), else a string."""
    if form == "choice":
        if isinstance(value, list) and value and all(isinstance(c, str) and c for c in value):
            return value
        expected = "a non-empty list of non-empty strings"
    elif isinstance(value, str) and value:
        return value
    else:
        expected = "a non-empty string"
    raise ApiError(400, f"{field} must be {expected}, got {SHOWN.repr(value)}", field, "invalid_type")
