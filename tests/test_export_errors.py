"""Bad input to `gpt2-onnx export`: one line naming the problem and the fix, a non-zero
exit, and no half-written output."""

from __future__ import annotations

import errno
import fcntl
import http.server
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpt2_onnx.apps.cli import main
from gpt2_onnx.benchmarks.serve_bench import free_port
from gpt2_onnx.errors import SourceError


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
    return not any(".partial-" in p.name or ".old-" in p.name or p.name.endswith(".lock") for p in parent.iterdir())


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and directory under `root`, with the files' contents."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


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


@pytest.mark.parametrize("case", ["itself", "inside", "parent", "project", "one path", "one path --force"])
def test_force_never_replaces_what_export_did_not_write(capsys, tmp_path, tiny_checkpoint, case):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "main.py").write_text("print('mine')")
    (project / "data" / "notes.txt").write_text("keep me")
    checkpoint = copy_checkpoint(tiny_checkpoint, project / "finetune")
    argv, needle = {
        "itself": ([checkpoint, checkpoint], "is the checkpoint SOURCE"),
        "inside": ([checkpoint, checkpoint / "sub"], "lies inside the checkpoint SOURCE"),
        "parent": ([checkpoint, project], "contains the checkpoint SOURCE"),
        "project": ([tiny_checkpoint, project / "data"], "holds notes.txt, not a gpt2-onnx model directory"),
        "one path": ([checkpoint], f"export got one path, {checkpoint}, which is a checkpoint; pass an OUT_DIR"),
        "one path --force": ([checkpoint], "pass an OUT_DIR"),
    }[case]
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, "export", *map(str, argv), "--no-check", *(["--force"] if case != "one path" else []))
    assert_one_line_error(code, err, needle)
    assert snapshot(tmp_path) == before


def test_an_empty_directory_is_used_and_an_earlier_export_alone_is_replaced_with_force(
    capsys, tmp_path, tiny_checkpoint
):
    out = tmp_path / "out"
    out.mkdir()
    code, _ = run_cli(capsys, "export", str(tiny_checkpoint), str(out), "--quantize", "int8", "--no-check")
    assert code == 0 and (out / "model.int8.onnx").is_file()
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(out), "--no-check")
    assert_one_line_error(code, err, "already holds a gpt2-onnx model", "--force")
    code, _ = run_cli(capsys, "export", str(tiny_checkpoint), str(out), "--force", "--no-check")
    assert code == 0 and (out / "gpt2_onnx.json").is_file()
    assert not (out / "model.int8.onnx").exists()  # listed by the earlier manifest: the earlier export's own
    assert no_leftovers(tmp_path)


@pytest.mark.parametrize("force", [True, False])
def test_force_keeps_a_file_added_beside_an_earlier_export(capsys, tmp_path, tiny_checkpoint, force):
    out = tmp_path / "out"
    code, _ = run_cli(capsys, "export", str(tiny_checkpoint), str(out), "--no-check")
    assert code == 0
    (out / "notes.md").write_text("what I learned from this model")
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(out), "--no-check", *(["--force"] if force else []))
    assert_one_line_error(code, err, f"{out} holds notes.md beside the gpt2-onnx model", "move it out of")
    assert snapshot(tmp_path) == before


def test_force_keeps_a_directory_whose_manifest_is_not_ours(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpt2_onnx.json").write_text("{}")
    (out / "results.csv").write_text("a,b\n1,2\n")
    (out / "tokenizer.json").write_text("{}")
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(out), "--force", "--no-check")
    assert_one_line_error(
        code,
        err,
        f"{out / 'gpt2_onnx.json'} is not a manifest this gpt2-onnx can read",
        "gpt2_onnx.json, results.csv and tokenizer.json",
        "choose another OUT_DIR",
    )
    assert snapshot(tmp_path) == before


def test_a_file_added_during_the_export_is_kept(tmp_path, tiny_checkpoint, monkeypatch):
    """OUT_DIR is checked again as the export is published: a file that appeared meanwhile stays, and so
    does the earlier export."""
    from gpt2_onnx.export import api

    out = api.export_model(str(tiny_checkpoint), tmp_path / "out", check=False)
    write_directory = api._write_directory

    def user_writes_meanwhile(*args, **kwargs):
        (out / "notes.md").write_text("written while the export ran")
        return write_directory(*args, **kwargs)

    monkeypatch.setattr(api, "_write_directory", user_writes_meanwhile)
    before = snapshot(out)
    with pytest.raises(SourceError, match=r"holds notes\.md beside the gpt2-onnx model.*\(nothing was replaced\)"):
        api.export_model(str(tiny_checkpoint), out, force=True, check=False)
    assert snapshot(out) == {**before, "notes.md": b"written while the export ran"}
    assert no_leftovers(tmp_path)


def test_one_path_that_is_no_checkpoint_says_the_default_model_is_exported(tmp_path):
    proc = run_export_subprocess([str(tmp_path / "out")], {"HF_HUB_OFFLINE": "1"}, tmp_path)
    progress = [line for line in proc.stderr.splitlines() if "no SOURCE given" in line]
    assert len(progress) == 1 and "uer/gpt2-distil-chinese-cluecorpussmall" in progress[0], proc.stderr
    assert_one_line_error(proc.returncode, proc.stderr, "cannot download")


def test_missing_parent(capsys, tmp_path, tiny_checkpoint):
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(tmp_path / "no" / "such" / "out"), "--no-check")
    assert_one_line_error(code, err, f"{tmp_path / 'no' / 'such'}, does not exist", "mkdir -p")
    assert list(tmp_path.iterdir()) == []


def test_export_size_estimate():
    from gpt2_onnx.export.destination import estimate_export_bytes

    fp32 = 400 << 20  # the distil checkpoint's pytorch_model.bin is about 300 MB
    assert fp32 < estimate_export_bytes(fp32, ["fp32"]) < 1.2 * fp32 + (16 << 20)
    assert 1.45 * fp32 < estimate_export_bytes(fp32, ["fp32", "int8", "int4"]) < 1.7 * fp32 + (16 << 20)
    assert estimate_export_bytes(0, ["fp32"]) > 0  # a hub id not yet downloaded: the margin alone


@pytest.fixture
def never_loaded(monkeypatch):
    """Destination checks come first: loading the checkpoint fails the test."""
    from gpt2_onnx.export import api

    def load(source):
        raise AssertionError(f"the checkpoint {source} was loaded before the destination was checked")

    monkeypatch.setattr(api, "load_checkpoint", load)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) → a fresh tmpfs, or None where this process may not mount one."""
    mounted = []

    def mount(options: str) -> Path | None:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            return None
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
        ).returncode:
            return None
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=True)


def test_read_only_target(capsys, tmp_path, tiny_checkpoint, tmpfs, never_loaded, monkeypatch):
    target = tmpfs("size=1m,ro")
    if target is None:
        from gpt2_onnx.export import destination

        target = tmp_path / "mnt0"
        monkeypatch.setattr(destination.os, "access", lambda path, mode: False)
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(target / "out"), "--no-check")
    assert_one_line_error(code, err, f"cannot write to {target}", "writable")
    assert list(target.iterdir()) == []


def test_full_target_is_refused_before_loading(capsys, tmp_path, tiny_checkpoint, tmpfs, never_loaded, monkeypatch):
    target = tmpfs("size=1m")
    if target is None:
        target = tmp_path / "mnt0"
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 20, 1 << 20, 0))
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(target / "out"), "--quantize", "int8", "--no-check")
    assert_one_line_error(code, err, str(target), "MiB free", "needs about", "fp32, int8")
    assert list(target.iterdir()) == []


def test_disk_full_while_writing(capsys, tmp_path, tiny_checkpoint, tmpfs, monkeypatch):
    """The free-space estimate passes (reported generously), the writing runs out of space."""
    from gpt2_onnx.export import api

    target = tmpfs("size=256k")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, 0, 1 << 40))
    if target is None:
        target = tmp_path / "mnt0"

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(api.onnx, "save_model", full)
    code, err = run_cli(capsys, "export", str(tiny_checkpoint), str(target / "out"), "--no-check")
    assert_one_line_error(code, err, f"cannot write {target / 'out'}: No space left on device", "free some space")
    assert list(target.iterdir()) == []


def test_failure_while_writing_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    from gpt2_onnx.export import api

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(api.onnx, "save_model", explode)
    with pytest.raises(SourceError, match=f"cannot write {tmp_path / 'out'}: disk full"):
        api.export_model(str(tiny_checkpoint), tmp_path / "out", check=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750)])
def test_permissions_follow_the_umask(tmp_path, tiny_checkpoint, umask, mode):
    from gpt2_onnx.export import export_model

    previous = os.umask(umask)
    try:
        out = export_model(str(tiny_checkpoint), tmp_path / "out", check=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {mode & 0o666}


# the export pauses after its first graph, so that the signal surely arrives mid-export
SLOW_EXPORT = """
import sys, time
from gpt2_onnx.apps.cli import main
from gpt2_onnx.errors import SourceError
from gpt2_onnx.export import api

write_variant = api._write_variant
def slow(*args, **kwargs):
    variant = write_variant(*args, **kwargs)
    time.sleep(120)
    return variant
api._write_variant = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_export_removes_the_partial_directory(tmp_path, tiny_checkpoint, signum):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXPORT, "export", str(tiny_checkpoint), str(out), "--no-check"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any((p / "model.onnx").exists() for p in tmp_path.glob(".out.partial-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_directory_is_removed(tmp_path, tiny_checkpoint):
    from gpt2_onnx.export import export_model

    stale = tmp_path / ".out.partial-killed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    export_model(str(tiny_checkpoint), tmp_path / "out", check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_live_partial_directory_of_a_concurrent_export_is_left_alone(tmp_path, tiny_checkpoint):
    from gpt2_onnx.export import export_model

    live = tmp_path / ".out.partial-live"
    live.mkdir()
    with open(tmp_path / ".out.lock", "w") as lock:  # held as a running export holds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(SourceError, match=f"another export to {tmp_path / 'out'} is running"):
            export_model(str(tiny_checkpoint), tmp_path / "out", check=False)
        assert live.is_dir() and not (tmp_path / "out").exists()


def test_concurrent_first_uses_of_a_hub_id_export_once(tmp_path, tiny_checkpoint, monkeypatch):
    from gpt2_onnx import hub
    from gpt2_onnx.export import api

    loads = []

    def load(source):
        loads.append(source)
        time.sleep(0.5)  # the other first use arrives meanwhile
        return real_load(str(tiny_checkpoint))

    real_load = api.load_checkpoint
    monkeypatch.setattr(api, "load_checkpoint", load)
    monkeypatch.setattr(api, "_check_parity", lambda *args: None)
    monkeypatch.setenv("GPT2_ONNX_CACHE", str(tmp_path / "cache"))
    results, errors = [], []

    def first_use():
        try:
            results.append(hub.resolve_model_dir("someone/tiny"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and loads == ["someone/tiny"]
    assert results == [tmp_path / "cache" / "someone--tiny"] * 2 and (results[0] / "gpt2_onnx.json").is_file()
    assert no_leftovers(tmp_path / "cache")


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
        [sys.executable, "-m", "gpt2_onnx.apps.cli", "export", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_hub_id(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        proc = run_export_subprocess(
            ["nobody/no-such-model", str(tmp_path / "out")], {"HF_ENDPOINT": endpoint}, tmp_path
        )
    finally:
        server.shutdown()
    assert_one_line_error(proc.returncode, proc.stderr, "nobody/no-such-model", "hub", "spelling")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["unreachable", "offline"])
def test_no_network(tmp_path, mode):
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"} if mode == "unreachable" else {"HF_HUB_OFFLINE": "1"}
    proc = run_export_subprocess(["uer/gpt2-distil-chinese-cluecorpussmall", str(tmp_path / "out")], env, tmp_path)
    # huggingface_hub's own command line is `hf` (its `huggingface-cli` is deprecated, then gone)
    assert_one_line_error(
        proc.returncode,
        proc.stderr,
        "cannot download",
        "no network",
        "`hf download uer/gpt2-distil-chinese-cluecorpussmall --local-dir DIR`",
    )
    assert not (tmp_path / "out").exists()
