"""`gpt2-onnx generate` and `check`, and first use of a hub id (exported into the cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from gpt2_onnx import Generator
from gpt2_onnx.cli import main


def cli(*args, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt2_onnx.cli", *args], input=stdin, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=600,
    )


def test_generate_streams_the_same_text_as_the_api(tiny_model):
    proc = cli("generate", "这是很久之前的事情了", "--model", str(tiny_model), "--precision", "fp32",
               "--max-new-tokens", "20", "--no-do-sample")
    assert proc.returncode == 0, proc.stderr
    expected = Generator.load(tiny_model, precision="fp32").generate("这是很久之前的事情了", max_new_tokens=20, do_sample=False)
    assert proc.stdout == expected.text + "\n"


def test_generate_json_lines(tiny_model):
    proc = cli("generate", "今天", "--model", str(tiny_model), "--json", "--max-new-tokens", "8",
               "--do-sample", "--seed", "3", "--num-return-sequences", "2")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["prompt"] == "今天" and len(r["token_ids"]) == 8 and r["finish_reason"] == "length"
        assert r["timings"]["new_tokens"] == 16 and r["timings"]["decode_tokens_per_s"] > 0


def test_prompts_from_standard_input(tiny_model):
    proc = cli("generate", "--model", str(tiny_model), "--max-new-tokens", "5", "--no-do-sample", stdin="这是\n今天天气\n")
    assert proc.returncode == 0, proc.stderr
    gen = Generator.load(tiny_model)
    expected = [gen.generate(p, max_new_tokens=5, do_sample=False).text for p in ("这是", "今天天气")]
    assert proc.stdout.splitlines() == expected


def test_bad_option_is_one_line(tiny_model, capsys):
    code = main(["generate", "x", "--model", str(tiny_model), "--top-p", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "top_p must be in (0, 1]" in err
    proc = cli("generate", "x", "--model", str(tiny_model), "--top-k", "many")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--top-k" in proc.stderr


def test_check_command(tiny_model, tiny_checkpoint):
    proc = cli("check", str(tiny_model), "--against", str(tiny_checkpoint))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["fp32", "int8"]
    assert "greedy 64/64 identical" in lines[0]


def fake_hub_cache(home, repo_id, checkpoint) -> None:
    """A Hugging Face cache holding `repo_id` as huggingface_hub itself lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_is_exported_on_first_use_then_loaded_from_cache(tiny_checkpoint, tmp_path):
    fake_hub_cache(tmp_path / "hf", "someone/tiny-chinese-gpt2", tiny_checkpoint)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "GPT2_ONNX_CACHE": str(tmp_path / "cache")}
    first = cli("generate", "这是", "--model", "someone/tiny-chinese-gpt2", "--max-new-tokens", "6", "--no-do-sample", env=env)
    assert first.returncode == 0, first.stderr
    assert "exporting someone/tiny-chinese-gpt2" in first.stderr
    cached = tmp_path / "cache" / "someone--tiny-chinese-gpt2"
    manifest = json.loads((cached / "gpt2_onnx.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "int8", "int4"}
    assert "writing model.int8.onnx" in first.stderr and "checking against transformers" in first.stderr
    assert manifest["source"]["revision"] == "0123456789abcdef0123456789abcdef01234567"
    second = cli("generate", "这是", "--model", "someone/tiny-chinese-gpt2", "--max-new-tokens", "6", "--no-do-sample", env=env)
    assert second.returncode == 0 and second.stdout == first.stdout and "exporting" not in second.stderr
    code = "import sys; from gpt2_onnx import Generator; Generator.load('someone/tiny-chinese-gpt2'); print('torch' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert probe.stdout.strip() == "False", probe.stderr
