"""Generation options, named and defaulted as in `transformers.GenerationConfig`.

The manifest's `generation_defaults` (e.g. uer: sampling with top_k 70) override the
defaults here; options passed to a call override both, and an option passed as None
means "the default", as in transformers. Every value is validated once, with an error
that names the parameter and its allowed range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import GenerationOptionError

# Rows (beams or returned sequences) one call decodes at once: each holds a KV cache row of up to
# the whole context (37.7 MB at full context for the distil model, 75 MB for GPT-2 base) and a row
# of logits per step, so this bounds what one option can make a call allocate (64 rows: 2.4 GB and
# 4.8 GB). `num_beams` and `num_return_sequences` are at most this, in every front door; a call of
# many prompts decodes this many rows at a time, the rest waiting their turn (a server's or batch
# job's engine holds --max-running rows, and refuses a request of more).
MAX_ROWS = 64
_ROWS_WHY = f" (a call decodes at most {MAX_ROWS} rows, beams or sequences, at once)"


@dataclass(frozen=True)
class GenerationConfig:
    """One call's decoding settings. `stop_token_ids=None` means the model's own ([SEP] for uer)."""

    max_new_tokens: int = 50
    min_new_tokens: int = 0  # stop tokens are suppressed until this many new tokens exist
    do_sample: bool = False
    temperature: float = 1.0  # 0 with do_sample: greedy
    top_k: int = 50  # 0 disables; applies only when sampling, as in transformers
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1.0 disables; >1 discourages tokens already in the sequence
    no_repeat_ngram_size: int = 0  # 0 disables
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence among the generated tokens
    num_return_sequences: int = 1
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = log-prob sum / generated_length ** length_penalty
    early_stopping: bool | str = False  # beams: True, False (heuristic) or "never"
    stop: tuple[str, ...] = ()  # strings that end a sequence; not included in the text
    stop_token_ids: tuple[int, ...] | None = None
    bad_words: tuple[str | tuple[int, ...], ...] = ()  # texts or id sequences never to generate
    seed: int | None = None
    logprobs: int = 0  # also return the log-probabilities of each chosen token and of the N most likely
    truncate: str | None = None  # "left": drop the prompt's oldest tokens to fit the context
    # "slide": max_new_tokens may pass the model's positions: when a row is full, its last
    # tokens are re-encoded as a window (the prompt prefix, context_keep prompt tokens, the
    # most recent half of the context) and generation goes on; "error": refuse such a call
    context_overflow: str = "error"
    context_keep: int = 0
    # speculative decoding by prompt lookup (transformers' names): propose up to this many
    # tokens that followed the latest n-gram (≤ max_matching_ngram_size) where it occurred
    # before, verify them in one pass; the output is what decoding without it gives
    prompt_lookup_num_tokens: int = 0
    max_matching_ngram_size: int = 2

    @classmethod
    def from_options(cls, defaults: Mapping[str, Any], options: Mapping[str, Any]) -> "GenerationConfig":
        names = {f.name for f in fields(cls)}
        for source, values in (("manifest generation_defaults", defaults), ("generate()", options)):
            unknown = sorted(set(values) - names)
            if unknown:
                raise GenerationOptionError(
                    f"unknown option {unknown[0]!r} in {source}; known options: {', '.join(sorted(names))}"
                )
        merged = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        for key in ("stop", "stop_token_ids", "bad_words"):
            if isinstance(merged.get(key), (list, tuple)):
                merged[key] = tuple(tuple(v) if isinstance(v, list) else v for v in merged[key])
            elif isinstance(merged.get(key), str):
                merged[key] = (merged[key],)
        config = replace(cls(), **merged)
        config.validate()
        return config

    def validate(self) -> None:
        _int(self, "max_new_tokens", 0)
        _int(self, "min_new_tokens", 0)
        _int(self, "top_k", 0)
        _int(self, "no_repeat_ngram_size", 0)
        _int(self, "num_return_sequences", 1, MAX_ROWS, _ROWS_WHY)
        _int(self, "num_beams", 1, MAX_ROWS, _ROWS_WHY)
        _int(self, "logprobs", 0)
        _bool(self, "do_sample")
        _float(self, "temperature", 0.0, None, "≥ 0")
        _float(self, "top_p", 0.0, 1.0, "in (0, 1]", open_low=True)
        _float(self, "repetition_penalty", 0.0, None, "> 0", open_low=True)
        _float(self, "presence_penalty", -2.0, 2.0, "in [-2, 2]")
        _float(self, "frequency_penalty", -2.0, 2.0, "in [-2, 2]")
        _float(self, "length_penalty", None, None, "a number")
        if self.early_stopping not in (True, False, "never"):
            raise GenerationOptionError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise GenerationOptionError(f"seed must be a non-negative int or None, got {self.seed!r}")
        _int(self, "context_keep", 0)
        _int(self, "prompt_lookup_num_tokens", 0)
        _int(self, "max_matching_ngram_size", 1)
        if self.prompt_lookup_num_tokens and (self.num_beams > 1 or self.num_return_sequences > 1):
            raise GenerationOptionError(
                "prompt_lookup_num_tokens works with one sequence per prompt: use num_beams=1 and num_return_sequences=1"
            )
        if self.context_overflow not in ("error", "slide"):
            raise GenerationOptionError(f"context_overflow must be 'error' or 'slide', got {self.context_overflow!r}")
        if self.context_overflow == "slide" and self.num_beams > 1:
            raise GenerationOptionError("context_overflow='slide' is not supported with beam search; use num_beams=1")
        if self.truncate not in (None, "left"):
            raise GenerationOptionError(f"truncate must be None or 'left', got {self.truncate!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise GenerationOptionError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        for s in self.stop:
            require_utf8(s, f"the stop string {s!r}")
        if self.stop_token_ids is not None and not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise GenerationOptionError(f"stop_token_ids must be a list of token ids (ints ≥ 0), got {self.stop_token_ids!r}")
        for word in self.bad_words:
            if not (isinstance(word, str) and word) and not (isinstance(word, tuple) and word and all(_is_int(t) for t in word)):
                raise GenerationOptionError(f"bad_words entries must be non-empty strings or lists of token ids, got {word!r}")
            if isinstance(word, str):
                require_utf8(word, f"the bad word {word!r}")
        self._validate_combination()

    def _validate_combination(self) -> None:
        if self.num_beams > 1:
            if self.do_sample:
                raise GenerationOptionError("num_beams > 1 with do_sample=True (beam sampling) is not supported; set do_sample=False")
            if self.num_return_sequences > self.num_beams:
                raise GenerationOptionError(
                    f"num_return_sequences ({self.num_return_sequences}) must be ≤ num_beams ({self.num_beams})"
                )
            if self.stop:
                raise GenerationOptionError("stop strings are not supported with beam search; use stop_token_ids or num_beams=1")
            if self.logprobs:
                raise GenerationOptionError("logprobs are not supported with beam search; use num_beams=1")
        elif self.num_return_sequences > 1 and not self.sampling:
            raise GenerationOptionError(
                f"num_return_sequences={self.num_return_sequences} needs do_sample=True or num_beams ≥ num_return_sequences "
                "(greedy decoding returns one sequence)"
            )

    @property
    def sampling(self) -> bool:
        """Sampling in effect: do_sample with a non-zero temperature."""
        return self.do_sample and self.temperature > 0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(config: GenerationConfig, name: str, low: int, high: int | None = None, why: str = "") -> None:
    v = getattr(config, name)
    if not _is_int(v) or v < low or (high is not None and v > high):
        allowed = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise GenerationOptionError(f"{name} must be an int {allowed}, got {v!r}{why}")


def _bool(config: GenerationConfig, name: str) -> None:
    v = getattr(config, name)
    if not isinstance(v, bool):
        raise GenerationOptionError(f"{name} must be True or False, got {v!r}")


def _float(config, name: str, low: float | None, high: float | None, allowed: str, open_low: bool = False) -> None:
    v = getattr(config, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    if ok and low is not None:
        ok = v > low if open_low else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        raise GenerationOptionError(f"{name} must be {allowed}, got {v!r}")


def as_sequence(prompts: str | Sequence[str]) -> tuple[list[str], bool]:
    """(prompts as a list, whether a single string was given); rejects other types."""
    if isinstance(prompts, str):
        return [prompts], True
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts), False
    raise GenerationOptionError(f"prompt must be a string or a non-empty list of strings, got {type(prompts).__name__}")


def require_utf8(text: str, what: str) -> None:
    """Refuse text holding lone surrogates: Python's stand-ins for bytes that were not valid
    UTF-8 (command-line arguments and standard input decode with `surrogateescape`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        found = f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate U+{code:04X}"
        raise GenerationOptionError(
            f"{what} is not valid UTF-8: it holds {found} at character {e.start}; pass UTF-8 text "
            "(convert the input with iconv, or set the terminal to UTF-8)"
        ) from None
