"""Checkpoints built at test time (random weights, real layouts) and their exports.

Nothing is downloaded: the full-size checkpoint has uer/gpt2-distil-chinese-cluecorpussmall's
exact file layout and shape, the tiny ones its conventions at a fraction of the size.

Tiers: every test that needs the full-size checkpoint is marked `slow` here, from its
fixtures, so `pytest -m "not slow"` (the fast tier, tiny models only) runs in minutes on
every change; modules that start Ray, the peers or pip mark themselves. CI runs all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpt2_onnx.benchmarks.synthetic import TINY, SyntheticSpec, write_gpt2_bpe_checkpoint, write_uer_checkpoint
from gpt2_onnx.export import export_model

# fixtures that make a test slow: the full-size export takes a minute or two on two cores
SLOW_FIXTURES = frozenset({"full_checkpoint", "full_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def gpt2_onnx_cache(tmp_path_factory) -> Path:
    """The runtime's cache (verified checksums, hub exports, bench artifacts) for this session
    only: tests never read or write the user's own."""
    path = tmp_path_factory.mktemp("gpt2-onnx-cache")
    os.environ["GPT2_ONNX_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_uer_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint", TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_model(str(tiny_checkpoint), tmp_path_factory.mktemp("tiny-onnx") / "model", quantize=("int8",))


@pytest.fixture(scope="session")
def tiny_int4(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model in fp32 and int4 (a precision whose logits depend on the call's shape)."""
    return export_model(
        str(tiny_checkpoint), tmp_path_factory.mktemp("tiny-int4") / "model", quantize=("int4",), check=False
    )


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory) -> Path:
    return write_uer_checkpoint(tmp_path_factory.mktemp("full") / "checkpoint", SyntheticSpec())


@pytest.fixture(scope="session")
def full_model(full_checkpoint, tmp_path_factory) -> Path:
    # check=False: test_export measures parity itself and asserts on the numbers
    return export_model(
        str(full_checkpoint), tmp_path_factory.mktemp("full-onnx") / "model", quantize=("int8", "int4"), check=False
    )


@pytest.fixture(scope="session")
def bpe_checkpoint(tmp_path_factory) -> Path:
    return write_gpt2_bpe_checkpoint(tmp_path_factory.mktemp("bpe") / "checkpoint")


@pytest.fixture(scope="session")
def bpe_model(bpe_checkpoint, tmp_path_factory) -> Path:
    return export_model(str(bpe_checkpoint), tmp_path_factory.mktemp("bpe-onnx") / "model", quantize=("int8",))


@pytest.fixture(scope="session")
def torch_model():
    """Loads a checkpoint into transformers once per session."""
    from transformers import GPT2LMHeadModel

    cache = {}

    def load(path: Path):
        if path not in cache:
            cache[path] = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
        return cache[path]

    return load


@pytest.fixture(scope="session")
def generators():
    """Generator.load once per (directory, precision)."""
    from gpt2_onnx import Generator

    cache = {}

    def load(path: Path, precision: str = "fp32"):
        if (path, precision) not in cache:
            cache[path, precision] = Generator.load(path, precision=precision)
        return cache[path, precision]

    return load
