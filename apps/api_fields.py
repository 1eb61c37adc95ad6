"""Reading a JSON request body: its fields' types checked, each read recorded (a field nobody reads is refused),
and the error answered with OpenAI's error body, naming the field (a 400 unless said otherwise)."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from typing import Any

from gpt2_onnx.errors import GenerationOptionError
from gpt2_onnx.option_registry import require_utf8


class ApiError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}} (and `headers`)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


NUMBER, INT, BOOL, STR, OBJECT = (int, float), (int,), (bool,), (str,), (dict,)
TYPE_NAMES = {NUMBER: "a number", INT: "an integer", BOOL: "true or false", STR: "a string", OBJECT: "an object"}
SHOWN = reprlib.Repr()  # values in messages: short, and safe on deeply nested JSON
SHOWN.maxstring, SHOWN.maxother, SHOWN.maxlist, SHOWN.maxdict, SHOWN.maxlevel = 80, 80, 8, 8, 3


class Fields:
    """A JSON object whose reads are recorded: a field the parser never read is one this server does not support."""

    def __init__(self, values: dict[str, Any], prefix: str = ""):
        self.values, self.prefix, self.read = values, prefix, set()

    def get(self, name: str) -> Any:
        self.read.add(name)
        return self.values.get(name)

    def refuse_unread(self) -> None:
        """400 naming the first field nobody read."""
        unread = next((name for name in self.values if name not in self.read), None)
        if unread is not None:
            name, known = self.prefix + unread, ", ".join(sorted(self.prefix + r for r in self.read))
            raise ApiError(
                400,
                f"unsupported field {SHOWN.repr(name)}: this server does not implement it; remove it "
                f"(supported fields: {known})",
                name,
                "unsupported_parameter",
            )


def get(body: Fields, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    """body[name] if of one of `kinds` (null → default); a 400 naming the field otherwise."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        field = body.prefix + name  # a nested field by its path: stream_options.include_usage
        raise ApiError(400, f"{field} must be {TYPE_NAMES[kinds]}, got {SHOWN.repr(value)}", field, "invalid_type")
    return value


def object_body(raw: Any) -> Fields:
    """A request body that must be a JSON object, its reads recorded."""
    if not isinstance(raw, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(raw).__name__}", None, "invalid_type")
    return Fields(raw)


def utf8(text: str, param: str) -> None:
    """400 naming `param` for text that is not UTF-8 (here, not when it is encoded: the error names the field)."""
    try:
        require_utf8(text, param, param)
    except GenerationOptionError as e:
        raise ApiError(400, str(e), param, "invalid_value") from None
