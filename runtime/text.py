"""Prompt encoding and text decoding by the model family's conventions.

uer (`wordpiece_cjk`): prompt = [CLS] + WordPiece ids, no [SEP]; decoded text drops
special tokens, joins `##` continuations, and puts a space only between two Latin /
digit word pieces, never around CJK characters or punctuation (WordPiece decoding
puts one between every token: `这 是 很 久`). English GPT-2 (`tokenizer`): the
tokenizer's own byte-level decoder.

Decoding is incremental (`TextAssembler`), and whole-sequence decoding is defined as
feeding every id to one, so streamed pieces always join to the decoded text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from .errors import ModelDirectoryError
from .manifest import DECODE_WORDPIECE_CJK, Conventions

REPLACEMENT_CHAR = "\ufffd"  # what an incomplete UTF-8 byte sequence decodes to


# the code point ranges BERT's basic tokenizer splits one character per token (inclusive)
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_cjk(ch: str) -> bool:
    """Whether a character is in `CJK_RANGES`."""
    cp = ord(ch)
    return any(low <= cp <= high for low, high in CJK_RANGES)


def is_word_char(ch: str) -> bool:
    """A character after which a word-starting piece gets a space (alphanumeric, not CJK)."""
    return ch.isalnum() and not is_cjk(ch)


def wordpiece_text(piece: str) -> tuple[str, bool]:
    """(the text a WordPiece piece appends after text that does not end with a word character, whether it
    is word-starting: after a word character it appends " " + that text). `##` continuations glue
    (`##ing` → ("ing", False)); a piece beginning with a word character starts a word (`ing` → ("ing", True))."""
    if piece.startswith("##"):
        return piece[2:], False
    return piece, is_word_char(piece[:1] or " ")


class TextCodec:
    """Encodes prompts and decodes ids for one model directory."""

    def __init__(self, tokenizer: Tokenizer, conventions: Conventions):
        self.tokenizer = tokenizer
        self.conventions = conventions
        self._special = frozenset(conventions.special_token_ids)
        self._wordpiece = conventions.decode == DECODE_WORDPIECE_CJK

    @classmethod
    def from_file(cls, path: Path, conventions: Conventions) -> TextCodec:
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception for a malformed file
            raise ModelDirectoryError(
                f"{path} cannot be read by tokenizers ({e}); re-export the model directory"
            ) from None
        return cls(tokenizer, conventions)

    def encode(self, prompt: str) -> list[int]:
        """Prompt ids with the family's prefix ([CLS] for uer) and no trailing special token."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return list(self.conventions.prompt_prefix_ids) + ids

    def token_sequences(self, text: str) -> list[list[int]]:
        """Every id sequence that decodes to a text fragment (for bad words), without prefix:
        its tokenization and, for WordPiece, also its first word as the `##` continuation of
        a preceding word (`鬍` → [鬍] and [##鬍], `ing` → [i, ##n, ##g] and [##ing]), when the
        vocabulary can spell it so."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        ids = encoding.ids
        if not self._wordpiece or not ids:
            return [ids]
        first = sum(1 for w in encoding.word_ids if w == encoding.word_ids[0])  # tokens of the first word
        word = "".join(self.piece(i).removeprefix("##") for i in ids[:first])
        continued = self._continuation(word)
        return [ids] if continued is None or continued == ids[:first] else [ids, continued + ids[first:]]

    def _continuation(self, word: str) -> list[int] | None:
        """WordPiece's greedy longest match of `word` with every piece a `##` piece, or None."""
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):  # the longest piece first
                piece_id = self.tokenizer.token_to_id("##" + word[start:end])
                if piece_id is not None:
                    break
            else:
                return None
            ids.append(piece_id)
            start = end
        return ids

    @property
    def wordpiece(self) -> bool:
        """Whether ids decode as WordPiece pieces (`piece`) rather than by the tokenizer's decoder."""
        return self._wordpiece

    def is_special(self, token_id: int) -> bool:
        """Special tokens ([CLS], [SEP], ...) never appear in decoded text."""
        return token_id in self._special

    def piece(self, token_id: int) -> str:
        """The WordPiece string of an id (`##` continuations keep their mark; "" for an id
        outside the vocabulary). Asked of the tokenizer per token (about a microsecond): a
        table of the whole vocabulary would cost every start 30 ms."""
        return self.tokenizer.id_to_token(token_id) or ""

    def decode(self, ids: Sequence[int]) -> str:
        assembler = self.assembler()
        return "".join(assembler.push(i) for i in ids) + assembler.flush()

    def assembler(self) -> TextAssembler:
        return TextAssembler(self)


class TextAssembler:
    """Turns ids into text one at a time; returns only text that later ids cannot change."""

    def __init__(self, codec: TextCodec):
        self._codec = codec
        self._previous_piece = ""  # last visible WordPiece piece, for the spacing rule
        self._pending: list[int] = []  # byte-level ids not yet forming whole characters

    def push(self, token_id: int) -> str:
        codec = self._codec
        if codec.is_special(token_id):
            return ""
        if codec.wordpiece:
            return self._wordpiece_piece(codec.piece(token_id))
        self._pending.append(token_id)
        text = codec.tokenizer.decode(self._pending, skip_special_tokens=True)
        if text.endswith(REPLACEMENT_CHAR):
            return ""  # a character split across tokens: wait for its remaining bytes
        self._pending.clear()
        return text

    def _wordpiece_piece(self, piece: str) -> str:
        text, word_starting = wordpiece_text(piece)
        if word_starting and self._previous_piece and is_word_char(self._previous_piece[-1]):
            text = " " + text
        if text:
            self._previous_piece = text
        return text

    def flush(self) -> str:
        """Whatever is still held back at the end of generation."""
        if not self._pending:
            return ""
        text = self._codec.tokenizer.decode(self._pending, skip_special_tokens=True)
        self._pending.clear()
        return text


class TextStream:
    """The text of one generated sequence, emitted piece by piece, with stop strings.

    Text that could still turn out to begin a stop string is held back, so a piece once
    emitted is never taken back; a found stop string ends the text before it.
    """

    def __init__(self, codec: TextCodec, stops: Sequence[str]):
        self._assembler = codec.assembler()
        self._stops = tuple(stops)
        self._text = ""  # everything decoded so far
        self._emitted = 0  # length of the prefix of _text already returned

    def push(self, token_id: int) -> tuple[str, bool]:
        """(new text safe to show, whether a stop string ended the sequence)."""
        old = len(self._text)
        self._text += self._assembler.push(token_id)
        if not self._stops:
            return self._take(len(self._text)), False
        window = max(0, old - max(map(len, self._stops)) + 1)
        hits = [i for i in (self._text.find(s, window) for s in self._stops) if i >= 0]
        if hits:
            self._text = self._text[: min(hits)]
            return self._take(len(self._text)), True
        return self._take(len(self._text) - self._held_back()), False

    def _held_back(self) -> int:
        """Length of the longest end of the text that is a proper prefix of a stop string."""
        for n in range(min(len(self._text), max(map(len, self._stops)) - 1), 0, -1):
            tail = self._text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0

    def _take(self, upto: int) -> str:
        piece = self._text[self._emitted : upto]
        self._emitted = max(self._emitted, upto)
        return piece

    def finish(self) -> str:
        """The rest of the text at the end of generation (held-back text included)."""
        self._text += self._assembler.flush()
        return self._take(len(self._text))
