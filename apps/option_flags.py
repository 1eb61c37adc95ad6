"""The generation options on the command line (`generate`, `batch`): one flag per row of the
option table that has one (`gpt2_onnx.option_registry.OPTIONS`), parsed into option names.

Every flag defaults to None: an option not given takes the model's default (batch: the row's,
else the model's), as an option passed as None does in Python.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gpt2_onnx.constraints import FORMS, OPTION, Form
from gpt2_onnx.option_registry import (
    BOOL,
    CHOICE,
    CONSTRAINT,
    FLOAT,
    ID_MAP,
    ID_MAP_ENTRY,
    INT,
    LISTS,
    OPTIONS,
    REPEATED,
)


def _id_map_entry(text: str) -> tuple[int, float]:
    """One `ID=VALUE` of an id map flag (`--logit-bias 100=-5`): an id and a number (their ranges are the runtime's)."""
    token, _, value = text.partition("=")
    try:
        if not (token.isascii() and token.isdigit()):
            raise ValueError
        return int(token), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {ID_MAP_ENTRY} (a token id, '=', a number, such as 100=-5), got {text!r}"
        ) from None


_TYPES = {INT: int, FLOAT: float, CHOICE: str, ID_MAP: _id_map_entry}


def _file_or_text(text: str) -> str:
    """A flag's text, or the content of the file it names (`--grammar FILE|LARK`)."""
    try:
        is_file = "\n" not in text and Path(text).is_file()
    except OSError:  # no path this system can have (too long): the text itself
        is_file = False
    if not is_file:
        return text
    try:
        return Path(text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {e}") from None


def _schema(text: str) -> Any:
    """`--json-schema FILE|JSON`: the JSON text given, or the file it names, parsed."""
    content = _file_or_text(text)
    try:
        return json.loads(content)
    except ValueError as e:
        source = "" if content is text else f" in {text}"
        raise argparse.ArgumentTypeError(f"the JSON schema{source} is not JSON ({e})") from None


_FORM_KWARGS: dict[str, dict[str, Any]] = {
    "json_schema": {"type": _schema},
    "json_object": {"action": "store_true", "default": None},
    "regex": {},
    "choice": {"action": "append"},
    "grammar": {"type": _file_or_text},
}


def _form_dest(form: Form) -> str:
    return f"constraint_{form.name}"


def _add_constraint_flags(parser: argparse.ArgumentParser, default: str) -> None:
    """One flag per constraint form, at most one of them given."""
    group = parser.add_mutually_exclusive_group()
    for form in FORMS:
        kwargs = {"default": None, "metavar": form.metavar or None, **_FORM_KWARGS[form.name]}
        if kwargs.get("action") == "store_true":
            kwargs.pop("metavar")
        repeatable = "repeatable; " if form.name == "choice" else ""
        group.add_argument(
            form.flag,
            dest=_form_dest(form),
            help=f"structured output: {form.help} ({repeatable}default: {default})",
            **kwargs,
        )


def add_option_flags(parser: argparse.ArgumentParser, default: str) -> None:
    """Add a flag per option; `default` ends each help ("the model's")."""
    for option in OPTIONS:
        if option.kind == CONSTRAINT:
            _add_constraint_flags(parser, "none")
        if option.flag is None:
            continue
        if option.kind == BOOL:  # --do-sample / --no-do-sample
            kwargs: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
        elif option.kind in LISTS:
            kwargs = {"action": "append"}
        elif option.kind == ID_MAP:
            kwargs = {"action": "append", "type": _TYPES[ID_MAP], "metavar": ID_MAP_ENTRY}
        else:
            kwargs = {"type": _TYPES[option.kind]}
            if option.kind == CHOICE:
                kwargs["choices"] = [c for c in option.choices if isinstance(c, str)]
        repeatable = "repeatable; " if option.kind in REPEATED else ""
        parser.add_argument(
            option.flag,
            dest=option.name,
            default=None,
            help=f"{option.help} ({repeatable}default: {default})",
            **kwargs,
        )


def options_given(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, by their names (absent flags are left out); an id map's
    entries as a dict (an id given twice: its last value)."""
    given = {o: getattr(args, o.name) for o in OPTIONS if o.flag is not None and getattr(args, o.name) is not None}
    options = {o.name: dict(value) if o.kind == ID_MAP else value for o, value in given.items()}
    forms = {f.name: getattr(args, _form_dest(f)) for f in FORMS if getattr(args, _form_dest(f), None) is not None}
    if forms:
        options[OPTION] = forms  # the option's name (CONSTRAINT is its kind)
    return options
