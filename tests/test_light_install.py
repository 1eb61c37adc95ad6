"""The quickstart's light install: the project with the `hub` extra and no torch or
transformers exports a hub id on first use and generates, never trying to import either.

Slow (it builds a virtual environment with pip, reusing pip's cache); CI runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import fake_hub_cache

from gpt2_onnx import Generator
from gpt2_onnx.export import export_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]  # the checkout under test
HUB_ID = "someone/tiny-chinese-gpt2"
# Run in the light environment: records every attempt to import torch or transformers
# (a meta-path finder sees each import before any other finder), then runs the CLI.
PROBE = """
import json, sys
attempts = []
class Recorder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            attempts.append(name)
        return None
sys.meta_path.insert(0, Recorder())
from gpt2_onnx.apps.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"attempts": attempts, "loaded": loaded}), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def light_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{ROOT}[hub]"], capture_output=True, text=True, timeout=1200
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    return python


@pytest.fixture(scope="module")
def first_use(light_python, tiny_checkpoint, tmp_path_factory):
    """`gpt2-onnx generate` with a hub id never exported, in the light environment."""
    home = tmp_path_factory.mktemp("light-home")
    fake_hub_cache(home / "hf", HUB_ID, tiny_checkpoint)
    env = {**os.environ, "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1", "GPT2_ONNX_CACHE": str(home / "cache")}
    env.pop("PYTHONPATH", None)
    args = ["generate", "这是", "--model", HUB_ID, "--max-new-tokens", "6", "--no-do-sample"]
    proc = subprocess.run(
        [str(light_python), "-c", PROBE, *args], capture_output=True, text=True, env=env, cwd=home, timeout=900
    )
    return proc, home / "cache" / HUB_ID.replace("/", "--")


def test_the_light_install_has_no_torch(light_python):
    code = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('transformers'))"
    assert subprocess.run([str(light_python), "-c", code], capture_output=True, text=True).stdout.split() == [
        "None",
        "None",
    ]


def test_first_use_exports_and_generates_without_importing_torch(first_use, tiny_checkpoint, tmp_path):
    proc, cached = first_use
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stderr.splitlines()[-1])
    assert record == {"attempts": [], "loaded": []}
    assert f"exporting {HUB_ID}" in proc.stderr and "writing model.int4.onnx" in proc.stderr
    assert proc.stderr.count("parity check against transformers + torch skipped") == 1
    assert f"gpt2-onnx check {cached} --against {HUB_ID}" in proc.stderr and "gpt2-onnx[check]" in proc.stderr
    reference = Generator.load(
        export_model(str(tiny_checkpoint), tmp_path / "ref", quantize=("int8", "int4"), check=False)
    )
    assert proc.stdout == reference.generate("这是", max_new_tokens=6, do_sample=False).text + "\n"


def test_graphs_are_the_files_the_torch_environment_writes(first_use, tiny_checkpoint, tmp_path):
    _, cached = first_use
    manifest = json.loads((cached / "gpt2_onnx.json").read_text())
    assert "torch" not in manifest["tools"] and "transformers" not in manifest["tools"]
    ours = json.loads(
        (
            export_model(str(tiny_checkpoint), tmp_path / "ref", quantize=("int8", "int4"), check=False)
            / "gpt2_onnx.json"
        ).read_text()
    )
    assert manifest["variants"] == ours["variants"]  # every graph and weights file, by sha256
    assert manifest["tokenizer_sha256"] == ours["tokenizer_sha256"]
