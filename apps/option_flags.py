"""The generation options on the command line (`generate`, `batch`): one flag per row of the
option table that has one (`gpt2_onnx.option_registry.OPTIONS`), parsed into option names.

Every flag defaults to None: an option not given takes the model's default (batch: the row's,
else the model's), as an option passed as None does in Python.
"""

from __future__ import annotations

import argparse
from typing import Any

from gpt2_onnx.option_registry import BOOL, CHOICE, FLOAT, ID_MAP, ID_MAP_ENTRY, INT, LISTS, OPTIONS, REPEATED


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


def add_option_flags(parser: argparse.ArgumentParser, default: str) -> None:
    """Add a flag per option; `default` ends each help ("the model's")."""
    for option in OPTIONS:
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
    return {o.name: dict(value) if o.kind == ID_MAP else value for o, value in given.items()}
