"""Weights read without torch (export/weights.py) against torch.load(weights_only=True), and
files that must be refused: pickles that would run code, truncated or inconsistent zips."""

from __future__ import annotations

import builtins
import hashlib
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gpt2_onnx.errors import SourceError
from gpt2_onnx.export import checkpoint, export_model
from gpt2_onnx.export.weights import read_tensors


@pytest.fixture(scope="module")
def state(tiny_checkpoint) -> dict[str, torch.Tensor]:
    return torch.load(tiny_checkpoint / "pytorch_model.bin", weights_only=True)


def torch_reference(file: Path) -> dict[str, np.ndarray]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(file))
    else:
        tensors = torch.load(file, map_location="cpu", weights_only=True)
    return {name: t.to(torch.float32).numpy() for name, t in tensors.items()}


def assert_identical(file: Path) -> dict[str, np.ndarray]:
    ours, theirs = read_tensors(file), torch_reference(file)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == np.float32 and ours[name].shape == theirs[name].shape, name
        assert ours[name].tobytes() == theirs[name].tobytes(), name  # bit-identical, NaN payloads included
    return ours


def test_fp32_checkpoint_of_the_uer_layout(tiny_checkpoint):
    assert len(assert_identical(tiny_checkpoint / "pytorch_model.bin")) == len(
        torch_reference(tiny_checkpoint / "pytorch_model.bin")
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_become_fp32(tmp_path, state, dtype):
    torch.save({name: t.to(dtype) for name, t in state.items()}, tmp_path / "pytorch_model.bin")
    ours = assert_identical(tmp_path / "pytorch_model.bin")
    assert not np.array_equal(ours["transformer.wte.weight"], state["transformer.wte.weight"].numpy())  # really rounded


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_safetensors_checkpoints(tmp_path, state, dtype):
    # safetensors stores no shared tensors: the tied head is left out, as save_pretrained does
    save_file(
        {name: t.to(dtype) for name, t in state.items() if name != "lm_head.weight"}, tmp_path / "model.safetensors"
    )
    assert_identical(tmp_path / "model.safetensors")


def test_shared_storage_offsets_and_strides(tmp_path, state):
    """A tied head saved as the embedding itself, a transposed view and a slice at an offset."""
    untied = {name: t.clone() for name, t in state.items() if name != "lm_head.weight"}
    wte = untied["transformer.wte.weight"]
    views = {"lm_head.weight": wte, "transposed": wte.t(), "rows": wte[5:9], "every_other": wte[::2, 1::3]}
    torch.save({**untied, **views}, tmp_path / "pytorch_model.bin")
    with zipfile.ZipFile(tmp_path / "pytorch_model.bin") as z:
        assert len([n for n in z.namelist() if "/data/" in n]) == len(untied)  # the views share wte's storage
    ours = assert_identical(tmp_path / "pytorch_model.bin")
    assert np.shares_memory(ours["lm_head.weight"], ours["transformer.wte.weight"])


def test_legacy_format_is_read_by_torch_or_refused_in_one_line(tmp_path, state, monkeypatch):
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert_identical(tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # as in an install without torch
    with pytest.raises(SourceError, match="legacy") as e:
        read_tensors(tmp_path / "pytorch_model.bin")
    assert "\n" not in str(e.value) and "save_pretrained" in str(e.value)


class RunsCode:
    def __init__(self, marker: Path, function):
        self.marker, self.function = marker, function

    def __reduce__(self):
        if self.function is os.system:
            return os.system, (f"touch {self.marker}",)
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("function, named", [(os.system, "posix.system"), (builtins.exec, "__builtin__.exec")])
def test_pickle_that_would_run_code_is_refused_unrun(tmp_path, state, function, named):
    marker = tmp_path / "pwned"
    torch.save({**state, "transformer.wte.weight": RunsCode(marker, function)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(SourceError, match=named) as e:
        read_tensors(tmp_path / "pytorch_model.bin")
    assert "\n" not in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def rewrite_zip(source: Path, target: Path, change) -> None:
    """Copy a torch zip record by record; `change(name, data)` returns new bytes or None to drop it."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info))
            if data is not None:
                new.writestr(info, data)


@pytest.mark.parametrize(
    "damage, detail",
    [
        ("truncated", "BadZipFile"),
        ("missing record", "data/3 is missing"),
        ("short record", "data/3 has"),
    ],
)
def test_damaged_zip_is_one_line_error(tmp_path, tiny_checkpoint, damage, detail):
    source, file = tiny_checkpoint / "pytorch_model.bin", tmp_path / "pytorch_model.bin"
    if damage == "truncated":
        file.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    else:
        drop = damage == "missing record"
        rewrite_zip(
            source, file, lambda name, data: (None if drop else data[:-8]) if name.endswith("/data/3") else data
        )
    with pytest.raises(SourceError, match="truncated or corrupt") as e:
        read_tensors(file)
    message = str(e.value)
    assert "\n" not in message and detail in message and str(file) in message and "download" in message


def test_graphs_are_identical_with_and_without_torch(tmp_path, tiny_checkpoint, monkeypatch):
    """The same export with the weights read by torch.load and by the torch-free reader."""
    without = export_model(str(tiny_checkpoint), tmp_path / "without", quantize=("int8", "int4"), check=False)
    monkeypatch.setattr(checkpoint, "read_tensors", torch_reference)
    with_torch = export_model(str(tiny_checkpoint), tmp_path / "with", quantize=("int8", "int4"), check=False)
    files = sorted(p.name for p in without.iterdir())
    assert files == sorted(p.name for p in with_torch.iterdir()) and "model.int4.onnx.data" in files
    for name in files:
        assert (
            hashlib.sha256((without / name).read_bytes()).digest()
            == hashlib.sha256((with_torch / name).read_bytes()).digest()
        ), name
