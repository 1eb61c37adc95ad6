"""Structured output: what a `constraint` option asks the text to be, and how each front door spells it.

    {"json_schema": {...}} │ {"json_object": True} │ {"regex": "..."} │ {"choice": [...]} │ {"grammar": "Lark"}
        ─Constraint.of─> Constraint (frozen: kind + value) ─grammar()─> llguidance's grammar text

Only the description lives here (the option table imports it, so it imports nothing heavy); the
vocabulary and the per-row matcher are in grammar.py. llguidance is an optional extra (`structured`):
asking for a constraint without it is one error naming the install.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import GenerationOptionError

INSTALL = "pip install 'gpt2-onnx[structured]'"


@dataclass(frozen=True)
class Form:
    """One way to state a constraint: its key in the option's map, its command-line flag (with its
    argument's metavar, "" for a switch) and the OpenAI request field that carries it."""

    name: str
    flag: str
    metavar: str
    body: str
    help: str


FORMS: tuple[Form, ...] = (
    Form("json_schema", "--json-schema", "FILE|JSON", "response_format", "JSON valid under this JSON schema"),
    Form("json_object", "--json-object", "", "response_format", "a JSON object"),
    Form("regex", "--regex", "REGEX", "guided_regex", "text matching this regular expression (Rust regex syntax)"),
    Form("choice", "--choice", "TEXT", "guided_choice", "exactly one of these texts"),
    Form("grammar", "--grammar", "FILE|LARK", "guided_grammar", "text of this Lark grammar (llguidance's dialect)"),
)
FORM_BY_NAME: Mapping[str, Form] = {f.name: f for f in FORMS}
OPTION = "constraint"
GUIDANCE_KEY = "x-guidance"  # a JSON schema's options for llguidance
# JSON as our vocabulary can write it: no optional whitespace (a space token exists only between two words)
JSON_DEFAULTS = {"whitespace_flexible": False}
NO_FORCING = '%llguidance {"no_forcing": true}'  # see Constraint.grammar


def option_of(form: str) -> str:
    """The option an error about this form names (`constraint.regex`): a front door names its own field."""
    return f"{OPTION}.{form}"


@dataclass(frozen=True)
class Constraint:
    """The text a sequence must be. `value`: the JSON schema as JSON text (json_schema), the regex or
    Lark text, the choices (a tuple), or "" (json_object)."""

    kind: str
    value: str | tuple[str, ...] = ""

    @classmethod
    def of(cls, value: Any) -> Constraint:
        """A Constraint from the option's value: a Constraint, or a map of one form to its value."""
        if isinstance(value, Constraint):
            return value
        forms = ", ".join(f.name for f in FORMS)
        if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in FORM_BY_NAME:
            raise GenerationOptionError(
                f"constraint must be a map of one form ({forms}) to its value, such as {{'regex': '[0-9]+'}}, "
                f"got {value!r}",
                option=OPTION,
            )
        ((kind, given),) = value.items()
        return cls(kind, _value(kind, given))

    @property
    def option(self) -> str:
        return option_of(self.kind)

    def grammar(self) -> str:
        """llguidance's grammar text for it (checked by `grammar.compile_constraint`): Lark, with forcing off
        (llguidance would otherwise allow only its own tokenization of text the grammar forces, which our
        vocabulary's context-dependent spellings cannot give)."""
        matcher = llguidance().LLMatcher
        if self.kind == "grammar":
            lark = self.value
        elif self.kind == "regex":  # llguidance's own regex → Lark (it escapes what Lark needs)
            lark = json.loads(matcher.grammar_from_regex(self.value))["grammars"][0]["lark_grammar"]
        elif self.kind == "choice":
            lark = "start: " + " | ".join(json.dumps(c) for c in self.value)
        else:
            schema = json.loads(self.value) if self.kind == "json_schema" else {"type": "object"}
            schema[GUIDANCE_KEY] = {**JSON_DEFAULTS, **schema.get(GUIDANCE_KEY, {})}
            lark = "start: %json " + json.dumps(schema)
        return matcher.grammar_from_lark(lark + "\n" + NO_FORCING)  # last: a grammar's own directive cannot undo it


def _value(kind: str, given: Any) -> str | tuple[str, ...]:
    """The form's value as a Constraint holds it, or an error naming the form and what it takes."""
    option = option_of(kind)
    if kind == "json_object":
        if given is not True:
            raise GenerationOptionError(f"json_object takes True, got {given!r}", option=option)
        return ""
    if kind == "json_schema":
        schema = given
        if isinstance(given, str):
            try:
                schema = json.loads(given)
            except ValueError as e:
                raise GenerationOptionError(f"the JSON schema is not JSON: {e}", option=option) from None
        if not isinstance(schema, Mapping):
            raise GenerationOptionError(f"a JSON schema is a JSON object, got {given!r}", option=option)
        if not isinstance(schema.get(GUIDANCE_KEY, {}), Mapping):  # grammar() merges JSON_DEFAULTS into it
            raise GenerationOptionError(
                f"the JSON schema's {GUIDANCE_KEY!r} (llguidance's JSON options) must be an object, such as "
                f"{JSON_DEFAULTS}, got {schema[GUIDANCE_KEY]!r}",
                option=option,
            )
        return json.dumps(schema, sort_keys=True, ensure_ascii=False)
    if kind == "choice":
        choices = (given,) if isinstance(given, str) else given
        if not isinstance(choices, (list, tuple)) or not choices or not all(isinstance(c, str) and c for c in choices):
            raise GenerationOptionError(
                f"choice takes a non-empty list of non-empty texts, got {given!r}", option=option
            )
        return tuple(choices)
    if not isinstance(given, str) or not given:
        raise GenerationOptionError(f"{kind} takes a non-empty text, got {given!r}", option=option)
    return given


def llguidance():
    """The llguidance module, or an error saying how to install it."""
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401  (the mask helpers)
    except ImportError:
        raise GenerationOptionError(
            f"constraints (structured output) need llguidance: {INSTALL}", option=OPTION
        ) from None
    return llguidance
