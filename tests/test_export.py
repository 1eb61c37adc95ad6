"""Exporter: the model-directory contract, file sizes, and parity with transformers + torch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from gpt2_onnx.benchmarks.synthetic import TINY, write_uer_checkpoint
from gpt2_onnx.checksums import sha256_file
from gpt2_onnx.export import export_model
from gpt2_onnx.export.parity import FP32_TOLERANCE, check_model
from gpt2_onnx.manifest import FORMAT_VERSION, read_manifest
from gpt2_onnx.precisions import BY_NAME

UER_FILES = {"config.json", "pytorch_model.bin", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"}


def test_fixture_has_the_exact_uer_layout(full_checkpoint):
    assert {p.name for p in full_checkpoint.iterdir()} == UER_FILES
    config = json.loads((full_checkpoint / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["vocab_size"], config["n_positions"]) == (
        6,
        768,
        12,
        21128,
        1024,
    )
    assert config["eos_token_id"] == config["bos_token_id"] == 50256
    assert config["activation_function"] == "gelu_new"
    vocab = (full_checkpoint / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 21128
    assert [vocab[i] for i in (0, 100, 101, 102, 103)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_model_directory_contract(full_model, full_checkpoint):
    graphs = ["model.onnx", "model.fp32.onnx", "model.int8.onnx", "model.int4.onnx"]
    data = ["model.fp32.onnx.data", "model.int8.onnx.data", "model.int4.onnx.data"]
    assert {p.name for p in full_model.iterdir()} == {*graphs, *data, "tokenizer.json", "config.json", "gpt2_onnx.json"}
    assert (full_model / "config.json").read_bytes() == (full_checkpoint / "config.json").read_bytes()
    m = read_manifest(full_model)
    assert m.file_names() == {p.name for p in full_model.iterdir()}  # what --force may replace: all of it
    assert m.format_version == FORMAT_VERSION == 2
    a = m.architecture
    assert (a.n_layer, a.n_head, a.n_embd, a.vocab_size, a.n_positions, a.head_dim) == (6, 12, 768, 21128, 1024, 64)
    # the ids that work for uer, not the config's 50256 (outside the vocabulary)
    assert m.conventions.prompt_prefix_ids == (101,)
    assert m.conventions.stop_token_ids == (102,)
    assert {0, 100, 101, 102, 103} <= set(m.conventions.special_token_ids)
    assert all(i < 21128 for i in m.conventions.special_token_ids)
    assert m.conventions.decode == "wordpiece_cjk"
    for name, variant in m.variants.items():
        assert variant.data_file == f"model.{name}.onnx.data"
        assert all(sha256_file(full_model / f) == sha for f, sha in variant.files())
    # every variant has the graph the runtime runs; FP32 also the ecosystem's (optimum loads it), on the same weights
    assert {name: [(g.file, g.io) for g in v.graphs] for name, v in m.variants.items()} == {
        "fp32": [("model.fp32.onnx", "kv_buffer"), ("model.onnx", "past_key_values")],
        "int8": [("model.int8.onnx", "kv_buffer")],
        "int4": [("model.int4.onnx", "kv_buffer")],
    }
    assert m.variants["fp32"].quantization is None
    q = m.variants["int8"].quantization
    assert (q.scheme, q.bits, q.block_size, q.symmetric, q.zero_point, q.max_value, q.activations) == (
        "per_channel",
        8,
        None,
        True,
        0,
        63,
        "int8_per_token",
    )
    assert len(q.weights) == 6 * 4 + 1 and "wte.weight" in q.weights and "h.5.mlp.c_proj.weight" in q.weights
    q4 = m.variants["int4"].quantization
    assert (q4.scheme, q4.bits, q4.symmetric, q4.zero_point, q4.max_value) == ("blockwise", 4, False, None, 15)
    assert q4.block_size == BY_NAME["int4"].blocks.block_size
    # the tied embedding / LM head at 8 bits per row, the rest in 4-bit blocks: every quantized weight once
    assert q4.per_channel_8bit == ("wte.weight",) and set(q4.weights) == set(q.weights) - {"wte.weight"}
    assert m.tokenizer_sha256 == sha256_file(full_model / "tokenizer.json")
    assert m.source["id"] == str(full_checkpoint) and m.source["family"] == "uer-chinese"
    assert {"onnx", "onnxruntime", "torch", "transformers", "tokenizers", "gpt2-onnx"} <= set(m.tools)
    assert m.generation_defaults["do_sample"] is True and m.generation_defaults["top_k"] == 70


@pytest.mark.parametrize("quantize", [(), ("int8",), ("int8", "int4")])
def test_the_manifest_lists_every_file_export_writes(tmp_path, tiny_checkpoint, quantize):
    """`Manifest.file_names` is what a later `export --force` may replace: exactly what export wrote."""
    out = export_model(str(tiny_checkpoint), tmp_path / "out", quantize=quantize, check=False)
    assert read_manifest(out).file_names() == {p.name for p in out.iterdir()}


def test_graph_io_follows_the_ecosystem_convention(full_model):
    import onnx

    model = onnx.load(full_model / "model.onnx", load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:-1] == [f"past_key_values.{i}.{k}" for i in range(6) for k in ("key", "value")]
    # logits_to_keep has a default (an initializer of the same name): tools that do not know it need not feed it
    assert inputs[-1] == "logits_to_keep" and "logits_to_keep" in {i.name for i in model.graph.initializer}
    assert outputs == ["logits"] + [f"present.{i}.{k}" for i in range(6) for k in ("key", "value")]
    assert not any(n.op_type in ("If", "Loop") for n in model.graph.node)


@pytest.mark.parametrize("variant", ["model.fp32.onnx", "model.int8.onnx", "model.int4.onnx"])
def test_runtime_graphs_write_the_kv_buffer_in_place(full_model, variant):
    import onnx

    model = onnx.load(full_model / variant, load_external_data=False)
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs)[:4] == ["input_ids", "seqlens_k", "total_sequence_length", "position_ids"]
    past = inputs["past_key_values.0.key"].type.tensor_type.shape.dim
    present = {o.name: o for o in model.graph.output}["present.0.key"].type.tensor_type.shape.dim
    assert past[2].dim_param == present[2].dim_param == "capacity"  # one buffer, not past + new
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 6 and "MultiHeadAttention" not in ops and "Split" not in ops


def test_file_sizes(full_model, full_checkpoint, torch_model):
    params = sum(p.numel() for p in torch_model(full_checkpoint).parameters())  # tied weights counted once
    variants = read_manifest(full_model).variants

    def size(precision: str) -> int:  # the graph and its weights
        return sum(os.path.getsize(full_model / name) for name, _ in variants[precision].files())

    assert size("fp32") <= 1.02 * 4 * params  # two graphs, one copy of the weights
    assert size("int8") <= 65e6
    # 4 bits + a scale and zero point per block, the embedding / LM head at 8 bits, FP32 position embedding
    assert size("int4") <= 50e6


def test_weights_are_aligned_for_memory_mapping(full_model):
    """Large tensors sit at 64 KiB-aligned offsets of the data file, so onnxruntime maps them
    instead of copying them."""
    import onnx

    model = onnx.load(full_model / "model.int8.onnx", load_external_data=False)
    external = [{e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data]
    large = [e for e in external if int(e["length"]) >= 1 << 16]
    assert len(large) >= 25 and all(int(e["offset"]) % (1 << 16) == 0 for e in large)
    assert {e["location"] for e in external} == {"model.int8.onnx.data"}


def test_full_size_parity_with_torch(full_model, full_checkpoint):
    reports = {r.precision: r for r in check_model(full_model, full_checkpoint)}
    for r in reports.values():
        print(r.line())
    fp32 = reports["fp32"]
    assert fp32.prefill_max_abs <= FP32_TOLERANCE
    assert fp32.decode_max_abs <= FP32_TOLERANCE
    assert fp32.padded_max_abs <= FP32_TOLERANCE
    assert fp32.greedy_agreement == fp32.greedy_tokens == 64
    for name in ("int8", "int4"):  # they run; their quality is measured on learned weights in benchmarks/
        r = reports[name]
        assert np.isfinite([r.prefill_max_abs, r.decode_max_abs, r.padded_max_abs]).all()
        assert r.greedy_tokens == 64
    # INT4 within its gate at full size too (symmetric absmax blocks were not: relative error 0.53, top-1 22 %)
    assert reports["int4"].verdict() == "within INT4 gate", reports["int4"].line()


def test_tiny_parity_with_torch(tiny_model, tiny_checkpoint):
    fp32 = check_model(tiny_model, tiny_checkpoint, variants=("fp32",))[0]
    assert max(fp32.prefill_max_abs, fp32.decode_max_abs, fp32.padded_max_abs) <= FP32_TOLERANCE
    assert fp32.greedy_agreement == fp32.greedy_tokens


TEXTS = [
    "这是很久之前的事情了",
    "今天天气晴朗，我们去公园散步吧！",
    "北京，上海：“春夏秋冬”（早晚）《红黄蓝绿》……",
    "hello world, the onnx model is testing 2024 and 3.14",
    "中文English混合mixed文本123",
    "  spaces\tand\nnewlines  ",
    "未知字符😀和ϕ符号",
]


def test_tokenizer_json_encodes_like_transformers_bert_tokenizer(full_model, full_checkpoint):
    from tokenizers import Tokenizer
    from transformers import BertTokenizer

    slow = BertTokenizer.from_pretrained(full_checkpoint)
    fast = Tokenizer.from_file(str(full_model / "tokenizer.json"))
    for text in TEXTS:
        assert fast.encode(text, add_special_tokens=False).ids == slow.encode(text, add_special_tokens=False), text


def test_safetensors_checkpoint(tmp_path):
    source = write_uer_checkpoint(tmp_path / "ckpt", TINY, safetensors=True)
    assert (source / "model.safetensors").exists() and not (source / "pytorch_model.bin").exists()
    out = export_model(str(source), tmp_path / "out")  # raises unless FP32 parity holds
    assert read_manifest(out).variants.keys() == {"fp32"}


@pytest.mark.parametrize("style", ["no_prefix", "explicit_lm_head"])
def test_state_dict_key_styles(tmp_path, tiny_checkpoint, style):
    """OpenAI's checkpoints name tensors without `transformer.`; some fine-tunes also store lm_head."""
    source = tmp_path / "ckpt"
    source.mkdir()
    for f in tiny_checkpoint.iterdir():
        if f.name != "pytorch_model.bin":
            (source / f.name).write_bytes(f.read_bytes())
    state = torch.load(tiny_checkpoint / "pytorch_model.bin", weights_only=True)
    if style == "no_prefix":
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    else:
        state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    torch.save(state, source / "pytorch_model.bin")
    export_model(str(source), tmp_path / "out")  # raises unless FP32 parity holds


def test_untied_lm_head(tmp_path):
    from transformers import GPT2LMHeadModel

    source = write_uer_checkpoint(tmp_path / "ckpt", TINY)
    model = GPT2LMHeadModel.from_pretrained(source)
    config = model.config
    config.tie_word_embeddings = False
    untied = GPT2LMHeadModel(config)
    untied.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        untied.lm_head.weight.copy_(torch.randn_like(untied.lm_head.weight) * 0.2)
    untied.save_pretrained(source, safe_serialization=False)
    (source / "generation_config.json").unlink(missing_ok=True)
    out = export_model(str(source), tmp_path / "out", quantize=("int8",))  # parity checked inside
    assert "lm_head.weight" in read_manifest(out).variants["int8"].quantization.weights


def test_english_bpe_checkpoint(bpe_model, bpe_checkpoint, generators):
    assert (bpe_checkpoint / "vocab.json").exists() and (bpe_checkpoint / "merges.txt").exists()
    m = read_manifest(bpe_model)
    eos = json.loads((bpe_checkpoint / "config.json").read_text())["eos_token_id"]
    assert m.conventions.prompt_prefix_ids == () and m.conventions.stop_token_ids == (eos,)
    assert m.conventions.decode == "tokenizer"
    result = generators(bpe_model).generate("The quick brown fox", max_new_tokens=12, do_sample=False)
    assert len(result.token_ids) >= 1 and isinstance(result.text, str)


def test_pickled_code_in_weights_is_never_run(tmp_path, tiny_checkpoint):
    """pytorch_model.bin is read by an unpickler that resolves only a state dict's globals: code is refused unrun."""
    from gpt2_onnx.errors import SourceError

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    source = tmp_path / "ckpt"
    source.mkdir()
    for f in tiny_checkpoint.iterdir():
        (source / f.name).write_bytes(f.read_bytes())
    torch.save({"wte.weight": Exploit()}, source / "pytorch_model.bin")
    with pytest.raises(SourceError, match="refers to posix.system"):
        export_model(str(source), tmp_path / "out", check=False)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
