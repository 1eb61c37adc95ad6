"""The generation options: one row per `GenerationConfig` field, read by every front door.

    OPTIONS ─> GenerationConfig.from_options and validate (each value's form: `coerce`; type and range: `check`)
            ─> the `generate` and `batch` flags (apps/option_flags.py)
            ─> the HTTP body parser (apps/openai_api.py) and its errors' `param`
            ─> the README's option table (`markdown_table`)

A row holds what an option is (kind, bounds or choices, one line of help) and how each
front door spells it (`body`: its OpenAI request field, `flag`: its command-line flag; None
where a front door does not take it). Defaults are not here: they are GenerationConfig's
field defaults, overridden by a manifest's `generation_defaults`. Rules over several options
(beams with sampling, ...) are code in GenerationConfig. A new option is a row here, a field
there and its logits processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from .constraints import FORM_BY_NAME, FORMS, OPTION, Constraint
from .errors import GenerationOptionError

# Rows (beams or returned sequences) one call decodes at once: each holds a KV cache row of up to
# the whole context (37.7 MB at full context for the distil model, 75 MB for GPT-2 base) and a row
# of logits per step, so this bounds what one option can make a call allocate (64 rows: 2.4 GB and
# 4.8 GB). `num_beams` and `num_return_sequences` are at most this, in every front door; a call of
# many prompts decodes this many rows at a time, the rest waiting their turn (an engine of a server
# or batch job holds its max_rows, and refuses a request of more).
MAX_ROWS = 64
_ROWS_WHY = f" (a call decodes at most {MAX_ROWS} rows, beams or sequences, at once)"

# what an option's value is
INT, FLOAT, BOOL, CHOICE = "int", "float", "bool", "choice"
TEXTS = "texts"  # a list of non-empty strings (a single string is a list of one)
IDS = "ids"  # a list of token ids
WORDS = "words"  # a list whose entries are non-empty strings or lists of token ids
LISTS = (TEXTS, IDS, WORDS)
# a map token id → number in [low, high] (JSON: an object, its keys the ids' decimal strings), held as
# (id, number) pairs in id order
ID_MAP = "id map"
ID_MAP_ENTRY = "ID=VALUE"  # one entry of an id map on the command line
# a constraint on the text (constraints.Constraint; given as a map of one form to its value): each form has a
# flag and a body field of its own (constraints.FORMS)
CONSTRAINT = "constraint"
REPEATED = (*LISTS, ID_MAP)  # kinds whose command-line flag is repeated, one entry each
_KIND_NAMES = {
    INT: "int",
    FLOAT: "float",
    BOOL: "bool",
    TEXTS: "list of strings",
    IDS: "list of token ids",
    WORDS: "list of strings or token-id lists",
}

_FROM_NAME = "<from the name>"  # `body`/`flag` not given: the option's name (its flag: dashes for underscores)


@dataclass(frozen=True)
class Option:
    """One generation option. `low`/`high`: inclusive bounds (`open_low`: low excluded);
    `nullable`: None is a value of its own (seed: none, stop_token_ids: the model's);
    `body`/`flag`: its OpenAI body field and command-line flag, None where not taken."""

    name: str
    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    why: str = ""  # appended to a range error
    body: str | None = _FROM_NAME
    flag: str | None = _FROM_NAME

    def __post_init__(self) -> None:
        if self.body == _FROM_NAME:
            object.__setattr__(self, "body", self.name)
        if self.flag == _FROM_NAME:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))

    @property
    def allowed(self) -> str:
        """Its values in words: "an int ≥ 0", "in (0, 1]", "'error' or 'slide'"."""
        if self.kind == CHOICE:
            shown = [repr(c) for c in self.choices]
            return f"{', '.join(shown[:-1])} or {shown[-1]}"
        if self.kind == BOOL:
            return "True or False"
        if self.kind in LISTS:
            return "a " + _KIND_NAMES[self.kind]
        if self.kind == ID_MAP:
            return f"a map token id → number {self._span()}"
        if self.kind == CONSTRAINT:
            return "None or a map of one form to its value: " + ", ".join(f"`{f.name}`" for f in FORMS)
        text = f"an int {self._span()}".rstrip() if self.kind == INT else self._span()
        return f"{text} or None" if self.nullable else text

    def _span(self) -> str:
        """Its bounds in words: "in (0, 1]", "≥ 0", "a number" (a float without bounds), "" (an int without)."""
        if self.low is not None and self.high is not None:
            bounds = f"{'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
            span = f"in {bounds}"
        elif self.low is not None:
            span = f"{'>' if self.open_low else '≥'} {self.low:g}"
        else:
            span = "a number" if self.kind == FLOAT else ""
        return span

    def coerce(self, value: Any) -> Any:
        """The value as GenerationConfig holds it (its type is checked later, by `check`): a list option's
        lists as tuples, a single string as a list of one; an id map's entries as (id, number) pairs in id
        order, its keys ints or, as JSON spells them, their decimal strings (another key is refused)."""
        if self.kind in LISTS and isinstance(value, (list, tuple)):
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
        if self.kind in LISTS and isinstance(value, str):
            return (value,)
        if self.kind == ID_MAP and isinstance(value, Mapping):
            return tuple(sorted(((self._map_key(k), v) for k, v in value.items()), key=itemgetter(0)))
        if self.kind == CONSTRAINT and value is not None:
            return Constraint.of(value)
        return value

    def _map_key(self, key: Any) -> int:
        if is_int(key) and key >= 0:
            return key
        if isinstance(key, str) and key.isascii() and key.isdigit():
            return int(key)
        raise GenerationOptionError(
            f"{self.name} keys must be token ids (ints ≥ 0; in JSON their decimal strings, such as '100'), got {key!r}",
            option=self.name,
        )

    def check(self, value: Any) -> None:
        """Refuse a value of the wrong type or out of range (GenerationOptionError naming this option)."""
        if value is None and self.nullable:
            return
        if self.kind in LISTS:
            self._check_entries(value)
        elif self.kind == ID_MAP:
            self._check_map(value)
        elif self.kind == CONSTRAINT:
            if not isinstance(value, Constraint):
                raise GenerationOptionError(f"{self.name} must be {self.allowed}, got {value!r}", option=self.name)
        elif not self._fits(value):
            raise GenerationOptionError(
                f"{self.name} must be {self.allowed}, got {value!r}{self.why}", option=self.name
            )

    def _fits(self, v: Any) -> bool:
        if self.kind == CHOICE:
            return v in self.choices
        if self.kind == BOOL:
            return isinstance(v, bool)
        return (is_int(v) or self.kind != INT) and self._in_range(v)

    def _in_range(self, v: Any) -> bool:
        """A number (not a bool, not NaN) within the bounds."""
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            return False
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        return self.high is None or v <= self.high

    def _check_map(self, value: Any) -> None:
        """(id, number) pairs in id order (as `coerce` makes them), each number within the bounds."""
        pairs = isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value)
        ids = [i for i, _ in value] if pairs else []
        if not pairs or not all(is_int(i) and i >= 0 for i in ids) or ids != sorted(set(ids)):
            raise GenerationOptionError(f"{self.name} must be {self.allowed}, got {value!r}", option=self.name)
        for token, number in value:
            if not self._in_range(number):
                raise GenerationOptionError(
                    f"{self.name} values must be numbers {self._span()}, got {number!r} for token id {token}",
                    option=self.name,
                )

    def _check_entries(self, value: Any) -> None:
        if self.kind == TEXTS and not all(isinstance(s, str) and s for s in value):
            raise GenerationOptionError(
                f"{self.name} must be a list of non-empty strings, got {value!r}", option=self.name
            )
        if self.kind == IDS and not all(is_int(t) and t >= 0 for t in value):
            raise GenerationOptionError(
                f"{self.name} must be a list of token ids (ints ≥ 0), got {value!r}", option=self.name
            )
        for entry in value:
            if (
                self.kind == WORDS
                and not (isinstance(entry, str) and entry)
                and not (isinstance(entry, tuple) and entry and all(is_int(t) for t in entry))
            ):
                raise GenerationOptionError(
                    f"{self.name} entries must be non-empty strings or lists of token ids, got {entry!r}",
                    option=self.name,
                )
            if isinstance(entry, str):
                require_utf8(entry, f"the {self.name} entry {entry!r}", self.name)


OPTIONS: tuple[Option, ...] = (
    Option("max_new_tokens", INT, "new tokens at most", low=0, body="max_tokens"),
    Option("min_new_tokens", INT, "stop tokens are suppressed before this many new tokens", low=0),
    Option("do_sample", BOOL, "sample (else greedy, or beam search)", body=None),  # the server: temperature > 0
    Option("temperature", FLOAT, "sampling temperature (0: greedy)", low=0),
    Option("top_k", INT, "sample among the k best tokens (0: all)", low=0),
    Option("top_p", FLOAT, "sample among the best tokens holding this probability", low=0, high=1, open_low=True),
    Option(
        "min_p", FLOAT, "sample among the tokens at least this fraction as likely as the best (0: off)", low=0, high=1
    ),
    Option("repetition_penalty", FLOAT, ">1 discourages repeating tokens (1: off)", low=0, open_low=True),
    Option("no_repeat_ngram_size", INT, "never repeat an n-gram of this size (0: off)", low=0),
    Option("presence_penalty", FLOAT, "OpenAI's: subtract once from tokens already generated", low=-2, high=2),
    Option("frequency_penalty", FLOAT, "OpenAI's: subtract per occurrence among generated tokens", low=-2, high=2),
    Option("num_return_sequences", INT, "sequences per prompt", low=1, high=MAX_ROWS, why=_ROWS_WHY, body="n"),
    Option("num_beams", INT, "beam search with this many beams", low=1, high=MAX_ROWS, why=_ROWS_WHY, body=None),
    Option("length_penalty", FLOAT, "beam score = log-prob sum / length ** this", body=None),
    Option(
        "early_stopping",
        CHOICE,
        "beams: stop when enough are done (True), by a heuristic (False), or never",
        choices=(True, False, "never"),
        body=None,
        flag=None,
    ),
    Option("stop", TEXTS, "a string that ends a sequence (not included in the text)"),
    Option(
        "stop_token_ids", IDS, "token ids that end a sequence (None: the model's)", nullable=True, body=None, flag=None
    ),
    Option("bad_words", WORDS, "never generate this text, however it is tokenized", flag="--bad-word"),
    Option(
        "logit_bias",
        ID_MAP,
        "OpenAI's: add this to the token's logit (greedy, sampling and beams; logprobs include it)",
        low=-100,
        high=100,
    ),
    Option(
        OPTION,
        CONSTRAINT,
        "structured output: the text is " + "; or ".join(f"{f.help} (`{f.name}`)" for f in FORMS),
        nullable=True,
        body=None,  # a field per form (constraints.FORMS)
        flag=None,
    ),
    Option("seed", INT, "random seed for sampling", low=0, nullable=True),
    Option("logprobs", INT, "also return each chosen token's log-probability and the N most likely", low=0, flag=None),
    Option(
        "truncate",
        CHOICE,
        "left: drop the prompt's oldest tokens to fit the context (else such a prompt is refused)",
        choices=(None, "left"),
    ),
    Option(
        "context_overflow",
        CHOICE,
        "slide: generate past the model's positions, re-encoding a window of recent text when the context is full",
        choices=("error", "slide"),
    ),
    Option("context_keep", INT, "with context_overflow slide: prompt tokens every window keeps", low=0),
    Option(
        "prompt_lookup_num_tokens",
        INT,
        "speculative decoding: propose up to this many tokens found earlier in "
        "the text (same output, faster on repeated text)",
        low=0,
    ),
    Option("max_matching_ngram_size", INT, "longest n-gram prompt lookup matches", low=1),
)
BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}
PROMPT = "prompt"  # the `option` of an error about the prompt itself (too long, not UTF-8)


def _form(option: str | None):
    """The constraint form an error's option names (`constraint.regex`), or None."""
    prefix, _, name = (option or "").partition(".")
    return FORM_BY_NAME.get(name) if prefix == OPTION else None


def body_field(option: str | None) -> str | None:
    """The OpenAI body field that sets `option` (the prompt: "prompt"; a constraint's form: its field);
    None when no field does."""
    if option == PROMPT:
        return PROMPT
    if (form := _form(option)) is not None:
        return form.body
    return BY_NAME[option].body if option in BY_NAME else None


def flag_of(option: str) -> str:
    """The command-line flag that sets `option` (a constraint's form: its flag; a setting outside the
    table: its name with dashes)."""
    if (form := _form(option)) is not None:
        return form.flag
    if option == OPTION:  # the constraint as a whole: any of its forms' flags
        return " / ".join(f.flag for f in FORMS)
    row = BY_NAME.get(option)
    return row.flag if row is not None and row.flag else "--" + option.replace("_", "-")


def is_int(v: Any) -> bool:
    """An int that is not a bool (JSON's true is no token id)."""
    return isinstance(v, int) and not isinstance(v, bool)


def require_utf8(text: str, what: str, option: str) -> None:
    """Refuse text holding lone surrogates: Python's stand-ins for bytes that were not valid
    UTF-8 (command-line arguments and standard input decode with `surrogateescape`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        found = f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate U+{code:04X}"
        raise GenerationOptionError(
            f"{what} is not valid UTF-8: it holds {found} at character {e.start}; pass UTF-8 text "
            "(convert the input with iconv, or set the terminal to UTF-8)",
            option=option,
        ) from None


def markdown_table() -> str:
    """The README's option table: every option, its values, its OpenAI field and its flag."""
    lines = ["| option | values | OpenAI body | command line | what |", "| --- | --- | --- | --- | --- |"]
    for o in OPTIONS:
        values = o.allowed if o.kind != INT or o.low is not None else "an int"
        shown = f"{o.flag} {ID_MAP_ENTRY}" if o.kind == ID_MAP else o.flag
        flag = "—" if o.flag is None else f"`{shown}`" + (" (repeatable)" if o.kind in REPEATED else "")
        if o.kind == BOOL and o.flag:
            flag = f"`{o.flag}` / `--no-{o.flag[2:]}`"
        body = "—" if o.body is None else f"`{o.body}`"
        if o.kind == CONSTRAINT:
            body = ", ".join(dict.fromkeys(f"`{f.body}`" for f in FORMS))
            flag = ", ".join(f"`{f.flag}{' ' + f.metavar if f.metavar else ''}`" for f in FORMS).replace("|", "\\|")
        lines.append(f"| `{o.name}` | {values} | {body} | {flag} | {o.help} |")
    return "\n".join(lines) + "\n"
