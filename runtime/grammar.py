"""Constraints as masks over the vocabulary, by llguidance: the text each token really appends.

    GrammarVocab.build (once per model) ─> compile(constraint) per request: a checked Grammar
    Grammar.matcher() per sequence ─> RowMatcher: allowed(stop ids) → bool [vocab] │ consume(token) │ done

A mask is right only if llguidance sees the text a token appends to what the user receives. Byte-level
BPE (English GPT-2) appends its bytes whatever came before: llguidance reads the tokenizer itself.
WordPiece under uer's conventions (text.py's TextAssembler) does not: `##` pieces glue, CJK characters
and punctuation join without spaces, and a word-starting piece (its first character alphanumeric and
not CJK) gets a space before it when the text shown so far ends with such a word character ("W").
So llguidance is given an extended vocabulary: ids [0, vocab) are the tokens as they append when W is
false, ids vocab + i a twin " " + piece of the i-th word-starting token (what it appends when W is
true). Each row tracks W as TextAssembler does; when W is true the twins' bits stand for their tokens,
and the matcher is told the twin. Tokens with no text (the specials, [UNK]) are llguidance's special
tokens: never allowed, but the stop tokens (llguidance's EOS) once the text is complete.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .constraints import Constraint, llguidance
from .errors import GenerationOptionError
from .text import TextCodec, is_word_char, wordpiece_text

KEEPS = -1  # ends_word of a token with no text: the row's W stays as it was


@dataclass(frozen=True)
class GrammarVocab:
    """One model's vocabulary as llguidance sees it (build once: about 0.2 s for 21,128 tokens)."""

    tokenizer: Any  # llguidance.LLTokenizer over the extended vocabulary
    size: int  # the model's vocabulary: real ids are < size
    twins: np.ndarray  # [twins] int64: the real id of twin size + i
    twin_of: np.ndarray  # [size] int64: the twin of a word-starting token, -1 for others
    ends_word: np.ndarray  # [size] int8: W after the token (1, 0), or KEEPS
    eos: np.ndarray  # [eos] int64: llguidance's EOS ids (the model's stop tokens)

    @classmethod
    def build(cls, codec: TextCodec, size: int, eos: Sequence[int]) -> GrammarVocab:
        llg = llguidance()
        if not codec.wordpiece:  # byte-level: each token appends its own bytes
            tokenizer = llg.LLTokenizer(codec.tokenizer.to_str(), n_vocab=size, eos_token=list(eos))
            empty = np.zeros(0, np.int64)
            return cls(tokenizer, size, empty, np.full(size, -1, np.int64), np.full(size, KEEPS, np.int8), _ids(eos))
        # what each token appends when the text does not end with a word character, and whether it is
        # word-starting (TextAssembler's rule); specials append nothing
        parts = [("", False) if codec.is_special(i) else wordpiece_text(codec.piece(i)) for i in range(size)]
        texts = [text for text, _ in parts]
        twins = [i for i, (_, word_starting) in enumerate(parts) if word_starting]
        twin_of = np.full(size, -1, np.int64)
        twin_of[twins] = np.arange(size, size + len(twins))
        ends_word = np.array([KEEPS if not t else int(is_word_char(t[-1])) for t in texts], np.int8)
        specials = [i for i, t in enumerate(texts) if not t]
        words = [t.encode() if t else codec.piece(i).encode() or b"<%d>" % i for i, t in enumerate(texts)]
        words += [b" " + texts[i].encode() for i in twins]
        wrapper = _Wordpieces(words, specials, int(eos[0]), _free_spellings(codec, texts, twins))
        tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(wrapper), n_vocab=len(words), eos_token=list(eos))
        return cls(tokenizer, size, np.array(twins, np.int64), twin_of, ends_word, _ids(eos))

    @property
    def n_ids(self) -> int:
        """Ids llguidance knows: the vocabulary and its twins."""
        return self.size + len(self.twins)


def _ids(ids: Sequence[int]) -> np.ndarray:
    return np.array(list(ids), np.int64)


def _free_spellings(codec: TextCodec, texts: list[str], twins: list[int]) -> dict[str, int]:
    """Text → an id that appends it wherever the text can be: every token but the word-starting ones
    (what those append depends on W), a `##` piece first where both spell it; and the twins (a text
    beginning with a space can only follow a word character, where the twins are what is appended)."""
    word_starting = set(twins)
    spellings: dict[str, int] = {}
    for token, text in enumerate(texts):
        if text and token not in word_starting and (text not in spellings or codec.piece(token).startswith("##")):
            spellings[text] = token
    spellings.update({" " + texts[token]: len(texts) + i for i, token in enumerate(twins)})
    return spellings


class _Wordpieces:
    """What llguidance's TokenizerWrapper reads: each id's bytes, the special ids, and a tokenizer that
    never depends on a left neighbour: greedy longest match over `spellings`, up to the first character
    none spells. (llguidance reads it for text a grammar forces; our grammars turn forcing off.)"""

    def __init__(self, words: list[bytes], specials: list[int], eos: int, spellings: dict[str, int]):
        self.tokens, self.special_token_ids = words, specials
        self.eos_token_id, self.bos_token_id = eos, None
        self._spellings = spellings
        self._longest = max(map(len, spellings), default=1)

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="ignore")
        ids, start = [], 0
        while start < len(text):
            for end in range(min(len(text), start + self._longest), start, -1):
                token = self._spellings.get(text[start:end])
                if token is not None:
                    ids.append(token)
                    break
            else:
                break
            start = end
        return ids


@dataclass(frozen=True)
class Grammar:
    """A request's constraint compiled for one model: every sequence starts a matcher from `start`."""

    constraint: Constraint
    vocab: GrammarVocab
    start: Any  # llguidance.LLMatcher before any token (copied per sequence)

    def matcher(self) -> RowMatcher:
        return RowMatcher(self.vocab, self.start.deep_copy())


def compile_constraint(constraint: Constraint, vocab: GrammarVocab) -> Grammar:
    """The constraint checked against this model: a grammar llguidance refuses, or one whose text
    cannot begin with any token of the vocabulary ([A-Z] on a vocabulary without capitals), is an
    error naming the constraint's form."""
    llg = llguidance()
    grammar = constraint.grammar()
    problem = llg.LLMatcher.validate_grammar(grammar, vocab.tokenizer)
    start = llg.LLMatcher(vocab.tokenizer, grammar, log_level=0) if not problem else None
    if start is not None and start.is_error():
        problem = start.get_error()
    if problem:
        raise GenerationOptionError(
            f"the {constraint.kind} constraint is not valid: {_one_line(problem)}", option=constraint.option
        )
    first = RowMatcher(vocab, start.deep_copy())
    first.allowed(vocab.eos)
    if first.dead:
        raise GenerationOptionError(
            f"the {constraint.kind} constraint allows no text this model's vocabulary can write: no token of "
            f"its {vocab.size} can begin it (its text starts with a character none writes there, such as a "
            f"capital letter in uer's vocabulary, or a space); make the {constraint.kind} begin with text the "
            "vocabulary has",
            option=constraint.option,
        )
    return Grammar(constraint, vocab, start)


def _one_line(problem: str) -> str:
    """llguidance's error as one line: without its echo of our Lark wrapping (numbered lines, carets) and
    the position in it."""
    lines = [line.strip() for line in problem.splitlines()]
    kept = [line for line in lines if line and not re.match(r"^(\d+ \||\^+$)", line)]
    return re.sub(r"^at \d+\(\d+\): ", "", " ".join(kept))


class RowMatcher:
    """One sequence's place in its constraint, and W (the text shown so far ends with a word character)."""

    def __init__(self, vocab: GrammarVocab, matcher):
        self.vocab, self._matcher = vocab, matcher
        self._word = False
        self._stuck = False  # the last mask allowed no token: see `dead`
        masks = llguidance().numpy
        self._bits = masks.allocate_token_bitmask(1, vocab.n_ids)  # [1, ceil(n_ids / 32)] int32
        self._fill = masks.fill_next_token_bitmask

    def allowed(self, stop_ids: np.ndarray) -> np.ndarray:
        """bool [vocab]: the tokens the text may go on with, and the stop tokens (in place of llguidance's
        EOS) once it may end, or when it is `dead` (then they alone)."""
        v = self.vocab
        self._fill(self._matcher, self._bits)
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: v.n_ids].view(np.bool_)  # [n_ids]
        allowed = bits[: v.size]
        if self._word and len(v.twins):  # word-starting tokens append their twins' text
            allowed[v.twins] = bits[v.size :]
        may_end = bool(allowed[v.eos].any())
        allowed[v.eos] = False
        # llguidance may allow only spellings the row's W rules out (after a word character, a word-starting
        # token's text without its space): then no token continues the text, though llguidance is not stopped
        self._stuck = self._matcher.is_stopped() or not (may_end or allowed.any())
        if self._stuck:
            allowed[:] = False
        allowed[stop_ids] = may_end or self._stuck
        return allowed

    def consume(self, token: int) -> None:
        """The row chose `token` (not a stop token)."""
        v = self.vocab
        twin = int(v.twin_of[token])
        self._matcher.consume_token(twin if self._word and twin >= 0 else token)
        if v.ends_word[token] != KEEPS:
            self._word = bool(v.ends_word[token])

    @property
    def done(self) -> bool:
        """llguidance has stopped: nothing may follow the text (`complete` tells whether it is whole)."""
        return self._matcher.is_stopped()

    @property
    def complete(self) -> bool:
        """The text so far satisfies the constraint."""
        return self._matcher.is_accepting()

    @property
    def dead(self) -> bool:
        """No token of the vocabulary continues the text, which does not satisfy the constraint yet (its
        next character is one no token writes here): the text is a valid prefix, and ends there."""
        return (self._stuck or self._matcher.is_stopped()) and not self._matcher.is_accepting()
