"""Checkpoints with random weights in real file layouts, for tests and benchmarks.

No weights can be downloaded in CI, so the suite builds what it exports: the exact
uer layout at full size (`pytorch_model.bin`, `vocab.txt`, eos/bos 50256, BERT-Chinese
special-token ids), tiny variants of it, safetensors, and an English GPT-2 with a
byte-level BPE tokenizer trained on the spot.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

# Characters the tests and benchmarks write prompts with come first, so that small
# vocabularies cover them; the rest of the CJK block fills up to the requested size.
COMMON_HANZI = (
    "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头经长儿回位分爱老因很给名法间斯知世什两次使身者被高已亲其进此话常与活正感"
    "见明问力理尔点文几定本公特做外孩相西果走将月十实向声车全信重三机工物气每并别真打太新比才便夫再书部水像眼等体却加电主界门利海受听表德少克代员许先口由死安写性马光白或住难望教命花结乐色更拉东神记处让母父应直字场平报友关放至张认接告入笑内英军候民岁往何度山觉路带万男边风解叫任金快原吃妈变通师立象数四失满战远格士音轻目条呢"
    "很久之前事情这是中文模型测试今天气晴朗我们去公园散步吧北京上海春夏秋冬红黄蓝绿早晚"
)
SPECIALS = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]", "<S>", "<T>"]
FULLWIDTH = "，。！？、；：「」『』（）《》“”‘’…—·"
LATIN_WORDS = [
    "the",
    "and",
    "hello",
    "world",
    "gpt",
    "onnx",
    "model",
    "test",
    "python",
    "is",
    "of",
    "to",
    "in",
    "it",
    "we",
]
CONTINUATIONS = [
    "##" + s for s in list(string.ascii_lowercase) + list(string.digits) + ["ing", "ed", "s", "er", "ly", "th"]
]


def bert_chinese_vocab(size: int) -> list[str]:
    """A vocabulary with the BERT-Chinese layout: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102,
    [MASK]=103, then symbols, digits, Latin pieces, `##` continuations and CJK characters."""
    tokens = list(SPECIALS)
    tokens += [c for c in string.punctuation] + list(string.digits) + list(string.ascii_letters)
    tokens += LATIN_WORDS + CONTINUATIONS + list(FULLWIDTH)
    tokens = list(dict.fromkeys(tokens))
    seen = set(tokens)
    hanzi = list(dict.fromkeys(COMMON_HANZI)) + [chr(c) for c in range(0x4E00, 0x9FFF)]
    for ch in hanzi:
        if len(tokens) >= size:
            break
        if ch not in seen:
            tokens.append(ch)
            seen.add(ch)
    if len(tokens) < size:
        raise ValueError(f"a BERT-Chinese style vocabulary holds at most {len(tokens)} tokens, {size} asked")
    return tokens[:size]


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a random checkpoint. The defaults are uer/gpt2-distil-chinese-cluecorpussmall's."""

    n_layer: int = 6
    n_embd: int = 768
    n_head: int = 12
    vocab_size: int = 21128
    n_positions: int = 1024
    seed: int = 0
    # transformers initialises with std 0.02, which makes a random model's logits so flat that
    # greedy decoding repeats one token; 0.1 (0.2 for the tiny shape) spreads them, so parity
    # tests follow varied paths while logits stay in a trained model's range.
    initializer_range: float = 0.1


TINY = SyntheticSpec(n_layer=2, n_embd=64, n_head=4, vocab_size=1024, n_positions=128, initializer_range=0.2)


def _random_model(spec: SyntheticSpec, vocab_size: int, **config_extra):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(spec.seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        activation_function="gelu_new",
        initializer_range=spec.initializer_range,
        **config_extra,
    )
    return GPT2LMHeadModel(config).eval()


def write_uer_checkpoint(out: Path, spec: SyntheticSpec = SyntheticSpec(), safetensors: bool = False) -> Path:
    """The file layout of the uer hub repository (with `model.safetensors` instead when asked)."""
    out.mkdir(parents=True, exist_ok=True)
    model = _random_model(
        spec,
        spec.vocab_size,
        bos_token_id=50256,
        eos_token_id=50256,
        tokenizer_class="BertTokenizer",
        task_specific_params={"text-generation": {"do_sample": True, "max_length": 320}},
    )
    model.save_pretrained(out, safe_serialization=safetensors)
    (out / "generation_config.json").unlink(missing_ok=True)  # the uer repository has none
    (out / "vocab.txt").write_text("\n".join(bert_chinese_vocab(spec.vocab_size)) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "tokenizer_class": "BertTokenizer"}))
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "unk_token": "[UNK]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "mask_token": "[MASK]",
            }
        )
    )
    return out


ENGLISH_TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world, this is a test of the GPT-2 model. "
    "ONNX Runtime runs models fast on the CPU; we measure tokens per second and time to first token. "
) * 8


def write_gpt2_bpe_checkpoint(out: Path, spec: SyntheticSpec = TINY) -> Path:
    """An English-style GPT-2: byte-level BPE (`vocab.json` + `merges.txt`), eos <|endoftext|>."""
    from tokenizers import ByteLevelBPETokenizer

    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [ENGLISH_TEXT], vocab_size=spec.vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"]
    )
    bpe.save_model(str(out))
    size = bpe.get_vocab_size()
    eos = bpe.token_to_id("<|endoftext|>")
    model = _random_model(spec, size, bos_token_id=eos, eos_token_id=eos)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    return out
