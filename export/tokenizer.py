"""The checkpoint's tokenizer as one `tokenizer.json`, and the conventions it implies.

transformers converts `vocab.txt` (BERT WordPiece, the uer family) or `vocab.json` +
`merges.txt` (byte-level BPE) into a `tokenizers` file, exactly as its fast tokenizers
do, so the runtime needs only the `tokenizers` package and encodes like transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2_onnx.errors import SourceError
from gpt2_onnx.manifest import DECODE_TOKENIZER, DECODE_WORDPIECE_CJK, Conventions


@dataclass(frozen=True)
class TokenizerExport:
    json: str  # the tokenizer.json text
    kind: str  # "wordpiece" or "bpe"
    conventions: Conventions


def export_tokenizer(path: Path, config: dict[str, Any], embedding_rows: int) -> TokenizerExport:
    tokenizer = _load_fast_tokenizer(path)
    if len(tokenizer) != embedding_rows:
        raise SourceError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the embedding has {embedding_rows} rows; "
            "the vocabulary file does not belong to these weights"
        )
    kind = "wordpiece" if tokenizer.backend_tokenizer.model.__class__.__name__ == "WordPiece" else "bpe"
    conventions = _wordpiece_conventions(tokenizer, path) if kind == "wordpiece" else _bpe_conventions(tokenizer, config, path)
    return TokenizerExport(json=tokenizer.backend_tokenizer.to_str(pretty=True), kind=kind, conventions=conventions)


def _load_fast_tokenizer(path: Path):
    from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast

    try:
        if (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file():
            tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        elif (path / "vocab.txt").is_file():
            tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=True)
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tokenizer = GPT2TokenizerFast(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
        else:
            raise SourceError(f"{path} has no tokenizer: expected vocab.txt, vocab.json + merges.txt, or tokenizer.json")
    except SourceError:
        raise
    except Exception as e:  # transformers raises many kinds for a broken tokenizer folder
        raise SourceError(f"the tokenizer files in {path} cannot be read ({type(e).__name__}: {e}); restore them from the checkpoint") from None
    if not tokenizer.is_fast:
        raise SourceError(f"the tokenizer in {path} has no fast (tokenizers) version; gpt2-onnx needs vocab.txt, vocab.json + merges.txt or tokenizer.json")
    return tokenizer


def _wordpiece_conventions(tokenizer, path: Path) -> Conventions:
    """uer: prompt = [CLS] + tokens, stop at [SEP]; the config's eos/bos (50256) are not in the vocabulary."""
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise SourceError(f"the WordPiece vocabulary in {path} lacks [CLS] or [SEP], which the uer convention needs")
    return Conventions(
        prompt_prefix_ids=(tokenizer.cls_token_id,),
        stop_token_ids=(tokenizer.sep_token_id,),
        special_token_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        decode=DECODE_WORDPIECE_CJK,
    )


def _bpe_conventions(tokenizer, config: dict[str, Any], path: Path) -> Conventions:
    """English GPT-2: no prompt prefix (as transformers' generate), stop at the eos token."""
    eos = config.get("eos_token_id")
    if not isinstance(eos, int) or not 0 <= eos < len(tokenizer):
        eos = tokenizer.eos_token_id
    if eos is None:
        raise SourceError(f"neither config.json nor the tokenizer in {path} names an end-of-text token inside the vocabulary")
    return Conventions(
        prompt_prefix_ids=(),
        stop_token_ids=(eos,),
        special_token_ids=tuple(sorted(set(tokenizer.all_special_ids) | {eos})),
        decode=DECODE_TOKENIZER,
    )
