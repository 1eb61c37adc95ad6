"""The runtime refuses a broken model directory with a message naming the file and the fix."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from gpt2_onnx import Generator, ModelDirectoryError


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "model")


def test_missing_variant_file(model_copy):
    (model_copy / "model.int8.onnx").unlink()
    with pytest.raises(ModelDirectoryError, match=r"model\.int8\.onnx is missing.*re-export"):
        Generator.load(model_copy, precision="int8")
    Generator.load(model_copy, precision="fp32")  # the other variant still loads


def test_missing_weights_file(model_copy):
    (model_copy / "model.fp32.onnx.data").unlink()
    with pytest.raises(ModelDirectoryError, match=r"model\.fp32\.onnx\.data is missing.*re-export"):
        Generator.load(model_copy, precision="fp32")


def test_missing_tokenizer(model_copy):
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelDirectoryError, match=r"tokenizer\.json is missing"):
        Generator.load(model_copy)


def test_corrupt_model_file(model_copy):
    path = model_copy / "model.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelDirectoryError, match=r"model\.fp32\.onnx does not match the sha256.*re-export"):
        Generator.load(model_copy, precision="fp32")


def test_verified_files_are_not_hashed_again_until_they_change(model_copy, monkeypatch):
    import gpt2_onnx.checksums as checksums

    hashed = []
    real = checksums.sha256_file
    monkeypatch.setattr(checksums, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    Generator.load(model_copy, precision="int8")
    assert sorted(hashed) == ["model.int8.onnx", "model.int8.onnx.data", "tokenizer.json"]
    hashed.clear()
    Generator.load(model_copy, precision="int8")
    assert hashed == []  # the stat signature is unchanged: nothing is read twice

    # the weights modified, same size, modification time set back: the change time still gives it away
    path = model_copy / "model.int8.onnx.data"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ModelDirectoryError, match=r"model\.int8\.onnx\.data does not match the sha256"):
        Generator.load(model_copy, precision="int8")
    assert hashed == ["model.int8.onnx.data"]


def test_first_load_after_export_hashes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    import gpt2_onnx.checksums as checksums
    from gpt2_onnx.export import export_model

    model = export_model(str(tiny_checkpoint), tmp_path / "model", quantize=("int8",), check=False)
    hashed = []
    real = checksums.sha256_file
    monkeypatch.setattr(checksums, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    Generator.load(model, precision="int8").generate("这是", max_new_tokens=3)
    assert hashed == []  # the exporter recorded what it had just written and hashed


def test_unknown_format_version(model_copy):
    manifest = json.loads((model_copy / "gpt2_onnx.json").read_text())
    manifest["format_version"] = 99
    (model_copy / "gpt2_onnx.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirectoryError, match=r"format_version 99.*reads version 2.*re-export"):
        Generator.load(model_copy)


def test_missing_manifest(model_copy):
    (model_copy / "gpt2_onnx.json").unlink()
    with pytest.raises(ModelDirectoryError, match=r"gpt2_onnx\.json is missing.*gpt2-onnx export"):
        Generator.load(model_copy)


def test_checkpoint_instead_of_model_directory(tiny_checkpoint):
    with pytest.raises(
        ModelDirectoryError, match=r"is a checkpoint, not an exported model directory.*gpt2-onnx export"
    ):
        Generator.load(tiny_checkpoint)


def test_malformed_manifest(model_copy):
    (model_copy / "gpt2_onnx.json").write_text("{not json")
    with pytest.raises(ModelDirectoryError, match="not valid JSON"):
        Generator.load(model_copy)


def test_deeply_nested_manifest(model_copy):
    (model_copy / "gpt2_onnx.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelDirectoryError, match="not valid JSON"):
        Generator.load(model_copy)


def test_nonexistent_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="does not exist.*gpt2-onnx export"):
        Generator.load(tmp_path / "none")


def test_precision_not_exported(tiny_checkpoint, tmp_path):
    from gpt2_onnx.export import export_model

    out = export_model(str(tiny_checkpoint), tmp_path / "fp32-only", check=False)
    with pytest.raises(ModelDirectoryError, match=r"no 'int8' variant.*--quantize int8"):
        Generator.load(out, precision="int8")


def test_bad_threads(tiny_model):
    with pytest.raises(ValueError, match="threads"):
        Generator.load(tiny_model, threads=0)


@pytest.mark.parametrize(
    "section, key, value, field",
    [
        ("architecture", "n_layer", "six", "architecture.n_layer"),
        ("architecture", "n_head", 0, "architecture.n_head"),
        ("conventions", "stop_token_ids", "102", "conventions.stop_token_ids"),
        ("conventions", "special_token_ids", [0, 1.5], r"conventions.special_token_ids\[1\]"),
        ("conventions", "decode", "spaces", "conventions.decode"),
        ("variants", "int8", ["model.int8.onnx"], "variants.int8"),
        (None, "tokenizer_sha256", 5, "tokenizer_sha256"),
    ],
)
def test_manifest_field_of_the_wrong_type(model_copy, section, key, value, field):
    path = model_copy / "gpt2_onnx.json"
    manifest = json.loads(path.read_text())
    (manifest[section] if section else manifest)[key] = value
    path.write_text(json.dumps(manifest))
    got = value[-1] if isinstance(value, list) and field.endswith("]") else value
    with pytest.raises(
        ModelDirectoryError, match=rf"malformed: the field {field} must be .*got {re.escape(repr(got))}"
    ):
        Generator.load(model_copy)


def test_missing_relative_path_is_not_a_hub_id(tmp_path, monkeypatch):
    """`models/distil` with a local `models/` directory is a missing path, never a download."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelDirectoryError, match=r"model directory models/distil does not exist; export one"):
        Generator.load("models/distil")


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_layer", 7),
        ("vocab_size", 30000),
        ("n_embd", 1024),
        ("n_positions", 4096),
    ],
)
def test_manifest_architecture_that_is_not_its_graphs(model_copy, field, value):
    """Checked against the graph's own shapes at load: a wrong n_positions would otherwise only fail once a
    sequence outgrows the position table, the others deep in onnxruntime."""
    from gpt2_onnx.benchmarks.synthetic import TINY

    path = model_copy / "gpt2_onnx.json"
    manifest = json.loads(path.read_text())
    manifest["architecture"][field] = value
    path.write_text(json.dumps(manifest))
    for precision in ("fp32", "int8"):
        expected = (
            rf"gpt2_onnx\.json does not match its graph model\.{precision}\.onnx: "
            rf"architecture\.{field} is {value}, the graph has {getattr(TINY, field)}; re-export"
        )
        with pytest.raises(ModelDirectoryError, match=expected):
            Generator.load(model_copy, precision=precision)


def test_manifest_architecture_that_is_not_its_graphs_is_one_line_on_the_command_line(model_copy, capsys):
    from gpt2_onnx.apps.cli import main

    path = model_copy / "gpt2_onnx.json"
    manifest = json.loads(path.read_text())
    manifest["architecture"]["n_positions"] *= 32
    path.write_text(json.dumps(manifest))
    code = main(["generate", "--model", str(model_copy), "--max-new-tokens", "2", "这是"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"gpt2-onnx: error: {path} does not match its graph model.int8.onnx: architecture.n_positions is "
        f"{manifest['architecture']['n_positions']}, the graph has {manifest['architecture']['n_positions'] // 32}; "
        "re-export the model directory"
    ]


def test_the_graph_architecture_is_read_from_the_graph_file(tiny_model):
    """Each precision's graph, both I/O conventions: the position table's dims come from the file itself."""
    from gpt2_onnx.benchmarks.synthetic import TINY
    from gpt2_onnx.graph_shapes import initializer_dims

    for graph in ("model.fp32.onnx", "model.int8.onnx", "model.onnx"):
        assert initializer_dims(tiny_model / graph, "wpe.weight") == (TINY.n_positions, TINY.n_embd)
        assert initializer_dims(tiny_model / graph, "no.such.weight") is None


def test_a_manifest_written_before_int4_zero_points_still_loads(tiny_int4, tmp_path):
    """Directories exported before INT4 had zero points: a symmetric record (`zero_point` 8, no
    `per_channel_8bit`) reads as it was written."""
    from gpt2_onnx.manifest import MANIFEST_NAME, read_manifest

    model = tmp_path / "old"
    shutil.copytree(tiny_int4, model)
    raw = json.loads((model / MANIFEST_NAME).read_text())
    q = raw["variants"]["int4"]["quantization"]
    q.pop("per_channel_8bit")
    q.update(symmetric=True, zero_point=8, max_value=7, weights=q["weights"] + ["wte.weight"])
    (model / MANIFEST_NAME).write_text(json.dumps(raw))
    old = read_manifest(model).variants["int4"].quantization
    assert (old.symmetric, old.zero_point, old.per_channel_8bit) == (True, 8, ())
    assert "wte.weight" in old.weights
