"""Generation options, named and defaulted as in `transformers.GenerationConfig`.

The manifest's `generation_defaults` (e.g. uer: sampling with top_k 70) override the
defaults here; options passed to a call override both, and an option passed as None
means "the default", as in transformers. Every value is validated once, with an error
that names the parameter and its allowed range: each option's own range by its row in the
option table (option_registry.py), the rules over several options here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from .constraints import Constraint
from .errors import GenerationOptionError
from .option_registry import BY_NAME, MAX_ROWS, OPTIONS, PROMPT, require_utf8

__all__ = ["GenerationConfig", "MAX_ROWS", "as_sequence", "require_utf8"]


@dataclass(frozen=True)
class GenerationConfig:
    """One call's decoding settings. `stop_token_ids=None` means the model's own ([SEP] for uer)."""

    max_new_tokens: int = 50
    min_new_tokens: int = 0  # stop tokens are suppressed until this many new tokens exist
    do_sample: bool = False
    temperature: float = 1.0  # 0 with do_sample: greedy
    top_k: int = 50  # 0 disables; applies only when sampling, as in transformers
    top_p: float = 1.0
    # sample only among tokens at least min_p × the best token's probability (0 disables); when sampling,
    # after temperature, top-k and top-p, as transformers' MinPLogitsWarper
    min_p: float = 0.0
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
    # OpenAI's logit_bias, as (token id, bias) pairs in id order (from a dict {id: bias}; JSON's string keys
    # taken): each bias is added to its token's logit before any processor, in every decoding mode
    logit_bias: tuple[tuple[int, float], ...] = ()
    # structured output: the text a sequence must be (a JSON schema, JSON, a regex, a choice, a Lark grammar;
    # given as a map of one form to its value), enforced by masking the logits (grammar.py)
    constraint: Constraint | None = None
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
    def from_options(cls, defaults: Mapping[str, Any], options: Mapping[str, Any]) -> GenerationConfig:
        names = {f.name for f in fields(cls)}
        for source, values in (("manifest generation_defaults", defaults), ("generate()", options)):
            unknown = sorted(set(values) - names)
            if unknown:
                raise GenerationOptionError(
                    f"unknown option {unknown[0]!r} in {source}; known options: {', '.join(sorted(names))}",
                    option=unknown[0],
                )
        merged = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        config = replace(cls(), **{k: BY_NAME[k].coerce(v) for k, v in merged.items()})
        config.validate()
        return config

    def validate(self) -> None:
        """Each option's type and range (the option table), then the rules over several options."""
        for option in OPTIONS:
            option.check(getattr(self, option.name))
        self._validate_combination()

    def _validate_combination(self) -> None:
        if self.prompt_lookup_num_tokens and (self.num_beams > 1 or self.num_return_sequences > 1):
            raise GenerationOptionError(
                "prompt_lookup_num_tokens works with one sequence per prompt: use num_beams=1 and "
                "num_return_sequences=1",
                option="prompt_lookup_num_tokens",
            )
        if self.constraint is not None and self.num_beams > 1:
            raise GenerationOptionError(
                "a constraint is not supported with beam search; use num_beams=1 (sampling or greedy)",
                option=self.constraint.option,
            )
        if self.context_overflow == "slide" and self.num_beams > 1:
            raise GenerationOptionError(
                "context_overflow='slide' is not supported with beam search; use num_beams=1", option="context_overflow"
            )
        if self.num_beams > 1:
            if self.do_sample:
                raise GenerationOptionError(
                    "num_beams > 1 with do_sample=True (beam sampling) is not supported; set do_sample=False",
                    option="do_sample",
                )
            if self.num_return_sequences > self.num_beams:
                raise GenerationOptionError(
                    f"num_return_sequences ({self.num_return_sequences}) must be ≤ num_beams ({self.num_beams})",
                    option="num_return_sequences",
                )
            if self.stop:
                raise GenerationOptionError(
                    "stop strings are not supported with beam search; use stop_token_ids or num_beams=1", option="stop"
                )
            if self.logprobs:
                raise GenerationOptionError(
                    "logprobs are not supported with beam search; use num_beams=1", option="logprobs"
                )
        elif self.num_return_sequences > 1 and not self.sampling:
            raise GenerationOptionError(
                f"num_return_sequences={self.num_return_sequences} needs do_sample=True or num_beams ≥ "
                "num_return_sequences "
                "(greedy decoding returns one sequence)",
                option="num_return_sequences",
            )

    @property
    def sampling(self) -> bool:
        """Sampling in effect: do_sample with a non-zero temperature."""
        return self.do_sample and self.temperature > 0


def as_sequence(prompts: str | Sequence[str]) -> tuple[list[str], bool]:
    """(prompts as a list, whether a single string was given); rejects other types."""
    if isinstance(prompts, str):
        return [prompts], True
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts), False
    raise GenerationOptionError(
        f"prompt must be a string or a non-empty list of strings, got {type(prompts).__name__}", option=PROMPT
    )
