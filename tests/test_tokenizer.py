"""tokenizer.json built with `tokenizers` alone is transformers' own file and encodes like it."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast

from gpt2_onnx.export.tokenizer import export_tokenizer

TEXTS = [
    "这是很久之前的事情了。",
    "北京上海，春夏秋冬！",
    "Hello world, GPT onnx model testing 1234 3.14",
    "Café naïve résumé ÀÉÎ",
    "混合 mixed 文本 with ##pieces and [CLS] [SEP] [MASK]",
    "  spaces\tand\nnewlines  ",
    "unknown ✈ 😀 ꙮ chars",
    "THE Quick BROWN fox",
    "",
    "<|endoftext|>the end<|endoftext|>",
]


def exported(path, monkeypatch):
    """Our export with torch and transformers unimportable, as in a light install."""
    config = json.loads((path / "config.json").read_text())
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "transformers", None)
        m.setitem(sys.modules, "torch", None)
        return export_tokenizer(path, config, config["vocab_size"])


def assert_same(ours: str, theirs) -> None:
    assert ours == theirs.backend_tokenizer.to_str(pretty=True)  # the same file, byte for byte
    fast = Tokenizer.from_str(ours)
    for text in TEXTS:
        assert fast.encode(text).ids == theirs(text)["input_ids"], text
        assert fast.encode(text, add_special_tokens=False).ids == theirs(text, add_special_tokens=False)["input_ids"], (
            text
        )


def test_uer_layout(tiny_checkpoint, monkeypatch):
    result = exported(tiny_checkpoint, monkeypatch)
    theirs = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert_same(result.json, theirs)
    assert result.conventions.prompt_prefix_ids == (theirs.cls_token_id,) and result.conventions.stop_token_ids == (
        theirs.sep_token_id,
    )
    assert result.conventions.special_token_ids == tuple(sorted(theirs.all_special_ids))


def test_bare_vocab_txt_is_cased(tiny_checkpoint, tmp_path, monkeypatch):
    source = tmp_path / "bare"
    source.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(tiny_checkpoint / name, source / name)
    theirs = BertTokenizerFast(vocab_file=str(source / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=True)
    assert_same(exported(source, monkeypatch).json, theirs)


def test_lower_casing_and_accent_stripping_from_tokenizer_config(tiny_checkpoint, tmp_path, monkeypatch):
    source = tmp_path / "lower"
    shutil.copytree(tiny_checkpoint, source)
    (source / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "strip_accents": True})
    )
    theirs = AutoTokenizer.from_pretrained(source)
    assert theirs.do_lower_case
    assert_same(exported(source, monkeypatch).json, theirs)


def test_byte_level_bpe(bpe_checkpoint, monkeypatch):
    result = exported(bpe_checkpoint, monkeypatch)
    theirs = GPT2TokenizerFast(
        vocab_file=str(bpe_checkpoint / "vocab.json"), merges_file=str(bpe_checkpoint / "merges.txt")
    )
    assert_same(result.json, theirs)
    assert result.conventions.stop_token_ids == (theirs.eos_token_id,)


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "bpe_checkpoint"])
def test_checkpoint_tokenizer_json_is_used_as_is(fixture, tmp_path, monkeypatch, request):
    source = tmp_path / "with-json"
    shutil.copytree(request.getfixturevalue(fixture), source)
    (source / "tokenizer.json").write_text(
        exported(source, monkeypatch).json.replace('"cleanup": true', '"cleanup": false')
    )
    assert exported(source, monkeypatch).json == Tokenizer.from_file(str(source / "tokenizer.json")).to_str(pretty=True)
