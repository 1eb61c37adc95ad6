"""Bad input to `gpt2-onnx export`: one line naming the problem and the fix, a non-zero
exit, and no half-written output."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gpt2_onnx.cli import main


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("gpt2-onnx: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def no_leftovers(parent: Path) -> bool:
    return not any(".partial-" in p.name or ".old-" in p.name for p in parent.iterdir())


def test_missing_source_path(capsys, tmp_path):
    code, err = run_cli(capsys, "export", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert_one_line_error(code, err, "does not exist", str(tmp_path / "nowhere"))
    assert not (tmp_path / "out").exists()


def test_config_that_is_not_gpt2(capsys, tmp_path, tiny_checkpoint):
    source = copy_checkpoint(tiny_checkpoint, tmp_path / "bert")
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "bert"
    (source / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "export", str(source), str(tmp_path / "out"))
    assert_one_line_error(code, err, "model_type 'bert'", "GPT-2")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_truncated_weights(capsys, tmp_path, tiny_checkpoint):
    source = copy_checkpoint(tiny_checkpoint, tmp_path / "truncated")
    weights = source / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run_cli(capsys, "export", str(source), str(tmp_path / "out"))
    assert_one_line_error(code, err, "pytorch_model.bin", "truncated or corrupt", "download")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_vocabulary_size_differs_from_embedding_rows(capsys, tmp_path, tiny_checkpoint):
    source = copy_checkpoint(tiny_checkpoint, tmp_path / "short-vocab")
    vocab = (source / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (source / "vocab.txt").write_text("\n".join(vocab[:-5]) + "\n", encoding="utf-8")
    code, err = run_cli(capsys, "export", str(source), str(tmp_path / "out"))
    assert_one_line_error(code, err, f"{len(vocab) - 5} tokens", f"{len(vocab)} rows")
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_out_dir_exists_without_force(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(out))
    assert_one_line_error(code, err, "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, _ = run_cli(capsys, "export", str(tiny_checkpoint), str(out), "--force", "--no-check")
    assert code == 0 and (out / "gpt2_onnx.json").exists() and not (out / "keep.txt").exists()
    assert no_leftovers(tmp_path)


def test_failure_while_writing_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    from gpt2_onnx.export import api

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(api.onnx, "save_model", explode)
    with pytest.raises(OSError):
        api.export_model(str(tiny_checkpoint), tmp_path / "out", check=False)
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _NotFoundHub(http.server.BaseHTTPRequestHandler):
    """Answers like the hub does for a repository that does not exist."""

    def _answer(self):
        body = b'{"error":"Repository not found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args):
        pass


def run_export_subprocess(args: list[str], env_extra: dict[str, str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home / "hf"), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "gpt2_onnx.cli", "export", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_unknown_hub_id(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        proc = run_export_subprocess(["nobody/no-such-model", str(tmp_path / "out")], {"HF_ENDPOINT": endpoint}, tmp_path)
    finally:
        server.shutdown()
    assert_one_line_error(proc.returncode, proc.stderr, "nobody/no-such-model", "hub", "spelling")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["unreachable", "offline"])
def test_no_network(tmp_path, mode):
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_free_port()}"} if mode == "unreachable" else {"HF_HUB_OFFLINE": "1"}
    proc = run_export_subprocess(["uer/gpt2-distil-chinese-cluecorpussmall", str(tmp_path / "out")], env, tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "cannot download", "no network", "--local-dir")
    assert not (tmp_path / "out").exists()
