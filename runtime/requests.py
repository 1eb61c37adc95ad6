"""What a caller gives the engine (a `Request`) and what it gets back (`Event`s)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .grammar import Grammar
from .logits import Processors
from .options import GenerationConfig

FINISH_STOP = "stop"  # a stop token was generated (it is the last token id), or a constraint's text is complete
FINISH_STOP_STRING = "stop_string"  # a stop string appeared (the text ends before it)
FINISH_LENGTH = "length"  # max_new_tokens reached (a constraint's text: a valid prefix, however it was cut)
FINISH_CANCELLED = "cancelled"  # the caller cancelled the request
FINISH_ERROR = "error"  # the engine failed (a server's engine thread reports it and goes on)


@dataclass(frozen=True)
class Event:
    """New output of one returned sequence (slot j of the request's num_return_sequences)."""

    slot: int
    tokens: tuple[int, ...]
    text: str
    finish_reason: str | None = None
    # with config.logprobs = N: per token, (its log-probability, the N most likely (id, log-probability))
    logprobs: tuple[tuple[float, list[tuple[int, float]]], ...] | None = None


@dataclass
class Clock:
    """When the request's first new token was chosen (beam search yields its events only at the end)."""

    first_token: float | None = None

    def mark(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()


@dataclass(eq=False)
class Request:
    """One prompt with its own options; `on_event` is called from the thread driving the engine."""

    prompt_ids: list[int]  # with the family's prefix
    config: GenerationConfig
    processors: Processors
    rng: np.random.Generator
    on_event: Callable[[Event], None]
    clock: Clock = field(default_factory=Clock)
    prefix_len: int = 0  # leading ids that are the family's prompt prefix ([CLS]): kept when a row slides
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied (set by the engine when it admits the request)
    grammar: Grammar | None = None  # config.constraint compiled for the model: each sequence gets a matcher of it

    @property
    def rows(self) -> int:
        """Cache rows the request decodes with."""
        return max(self.config.num_beams, self.config.num_return_sequences)
