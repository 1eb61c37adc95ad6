"""The checkpoint's tokenizer as one `tokenizer.json`, and the conventions it implies.

`vocab.txt` (BERT WordPiece, the uer family) and `vocab.json` + `merges.txt` (byte-level
BPE) become a `tokenizers` file built exactly as transformers' fast-tokenizer converters
build it (tests compare the files and the encodings), with the `tokenizers` package
alone: exporting needs no transformers, and the runtime encodes like transformers.
A checkpoint's own `tokenizer.json` is used as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from gpt2_onnx.errors import SourceError
from gpt2_onnx.manifest import DECODE_TOKENIZER, DECODE_WORDPIECE_CJK, Conventions

ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# transformers' defaults: BertTokenizerFast's and GPT2TokenizerFast's
DEFAULT_SPECIALS = {
    "wordpiece": {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    },
    "bpe": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
}


@dataclass(frozen=True)
class TokenizerExport:
    json: str  # the tokenizer.json text
    kind: str  # "wordpiece" or "bpe"
    conventions: Conventions


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens that are in the vocabulary, by role (`cls_token`, ...)."""

    roles: dict[str, int]
    all: tuple[int, ...]  # every special id, additional ones included


def export_tokenizer(path: Path, config: dict[str, Any], embedding_rows: int) -> TokenizerExport:
    settings, special_map = _read_json(path / "tokenizer_config.json"), _read_json(path / "special_tokens_map.json")
    try:
        tokenizer, kind = _build_tokenizer(path, settings, special_map)
    except SourceError:
        raise
    except Exception as e:  # tokenizers raises plain Exception for a bad file
        raise SourceError(
            f"the tokenizer files in {path} cannot be read ({type(e).__name__}: {e}); restore them from the checkpoint"
        ) from None
    specials = _special_ids(tokenizer, _special_names(kind, settings, special_map), special_map)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != embedding_rows:
        raise SourceError(
            f"the tokenizer in {path} has {size} tokens but the embedding has {embedding_rows} rows; "
            "the vocabulary file does not belong to these weights"
        )
    conventions = (
        _wordpiece_conventions(specials, path)
        if kind == "wordpiece"
        else _bpe_conventions(specials, config, size, path)
    )
    return TokenizerExport(json=tokenizer.to_str(pretty=True), kind=kind, conventions=conventions)


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{file} is not valid JSON ({e}); restore it from the checkpoint") from None


def _build_tokenizer(path: Path, settings: dict[str, Any], special_map: dict[str, Any]) -> tuple[Tokenizer, str]:
    if (path / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        return tokenizer, "wordpiece" if isinstance(tokenizer.model, models.WordPiece) else "bpe"
    if (path / "vocab.txt").is_file():
        names = _special_names("wordpiece", settings, special_map)
        return _wordpiece(path / "vocab.txt", settings, names), "wordpiece"
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        names = _special_names("bpe", settings, special_map)
        return _byte_level_bpe(path / "vocab.json", path / "merges.txt", settings, names), "bpe"
    raise SourceError(f"{path} has no tokenizer: expected vocab.txt, vocab.json + merges.txt, or tokenizer.json")


def _wordpiece(vocab_file: Path, settings: dict[str, Any], names: dict[str, str]) -> Tokenizer:
    """transformers' BertConverter: BERT normalizer and pre-tokenizer, WordPiece, [CLS] $A [SEP]."""
    with open(vocab_file, encoding="utf-8") as f:  # text mode, as transformers' load_vocab reads it
        vocab = {token.rstrip("\n"): index for index, token in enumerate(f.readlines())}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=names["unk_token"], max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        # BertTokenizerFast lower-cases unless told otherwise; a bare vocab.txt (no config) is uer's, cased
        strip_accents=settings.get("strip_accents"),
        lowercase=settings.get("do_lower_case", True) if settings else False,
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = names["cls_token"], names["sep_token"]
    if cls in vocab and sep in vocab:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in dict.fromkeys(names.values())])
    return tokenizer


def _byte_level_bpe(vocab_file: Path, merges_file: Path, settings: dict[str, Any], names: dict[str, str]) -> Tokenizer:
    """transformers' GPT2Converter: byte-level pre-tokenizer, decoder and post-processor around BPE."""
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").split("\n")[1:-1]  # GPT2Tokenizer skips the #version line
    merges = [tuple(line.split()) for line in lines]
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=settings.get("add_prefix_space", False))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, normalized=True, special=True) for t in dict.fromkeys(names.values())])
    return tokenizer


def _special_names(kind: str, settings: dict[str, Any], special_map: dict[str, Any]) -> dict[str, str]:
    """Role → token text: the defaults of the kind, then tokenizer_config.json, then special_tokens_map.json."""
    names = dict(DEFAULT_SPECIALS[kind])
    for source in (settings, special_map):
        for role in ROLES:
            value = source.get(role)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                names[role] = value
    return names


def _special_ids(tokenizer: Tokenizer, names: dict[str, str], special_map: dict[str, Any]) -> SpecialIds:
    roles = {
        role: tokenizer.token_to_id(token) for role, token in names.items() if tokenizer.token_to_id(token) is not None
    }
    extra = [t if isinstance(t, str) else t.get("content") for t in special_map.get("additional_special_tokens", [])]
    extra_ids = [tokenizer.token_to_id(t) for t in extra if isinstance(t, str)]
    return SpecialIds(roles, tuple(sorted(set(roles.values()) | {i for i in extra_ids if i is not None})))


def _wordpiece_conventions(specials: SpecialIds, path: Path) -> Conventions:
    """uer: prompt = [CLS] + tokens, stop at [SEP]; the config's eos/bos (50256) are not in the vocabulary."""
    cls, sep = specials.roles.get("cls_token"), specials.roles.get("sep_token")
    if cls is None or sep is None:
        raise SourceError(f"the WordPiece vocabulary in {path} lacks [CLS] or [SEP], which the uer convention needs")
    return Conventions(
        prompt_prefix_ids=(cls,),
        stop_token_ids=(sep,),
        special_token_ids=specials.all,
        decode=DECODE_WORDPIECE_CJK,
    )


def _bpe_conventions(specials: SpecialIds, config: dict[str, Any], size: int, path: Path) -> Conventions:
    """English GPT-2: no prompt prefix (as transformers' generate), stop at the eos token."""
    eos = config.get("eos_token_id")
    if not isinstance(eos, int) or not 0 <= eos < size:
        eos = specials.roles.get("eos_token")
    if eos is None:
        raise SourceError(
            f"neither config.json nor the tokenizer in {path} names an end-of-text token inside the vocabulary"
        )
    return Conventions(
        prompt_prefix_ids=(),
        stop_token_ids=(eos,),
        special_token_ids=tuple(sorted(set(specials.all) | {eos})),
        decode=DECODE_TOKENIZER,
    )
