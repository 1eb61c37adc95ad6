"""`gpt2-onnx batch` on this machine: rows, errors, options, resume, Parquet, the CLI. No Ray."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from batch_rows import BAD_ROWS, by_id, job_rows, read_jsonl, write_jsonl

from gpt2_onnx.apps.batch import merge_options, run_local
from gpt2_onnx.errors import Gpt2OnnxError

GREEDY = {"do_sample": False, "max_new_tokens": 6}
SAMPLED = {"do_sample": True, "max_new_tokens": 6, "temperature": 0.9}


@pytest.fixture(scope="module")
def generator(tiny_model, generators):
    return generators(tiny_model, "fp32")


def test_row_options_override_the_command_line():
    assert merge_options({"top_k": 3, "seed": 1}, {"id": "a", "prompt": "p", "top_k": 9, "seed": None}) == {
        "top_k": 9,
        "seed": 1,
    }


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_job_rows_equal_generate_row_by_row(generator, tmp_path, options):
    rows = job_rows(60, sampled=options["do_sample"])
    summary = run_local(
        generator,
        write_jsonl(tmp_path / "in.jsonl", rows),
        tmp_path / "out.jsonl",
        options,
        max_running=7,
        progress=False,
    )
    out = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert summary.written == len(out) == 60 and summary.errors == 0
    for line, row in enumerate(rows, start=1):
        got = out[row.get("id", line)]
        own = {k: v for k, v in row.items() if k not in ("id", "prompt")}
        want = generator.generate(row["prompt"], **{**options, **own})
        assert (got["text"], tuple(got["token_ids"]), got["finish_reason"]) == (
            want.text,
            want.token_ids,
            want.finish_reason,
        )
        assert got["usage"] == {"prompt_tokens": want.prompt_tokens, "completion_tokens": len(want.token_ids)}
        assert got["prompt"] == row["prompt"] and "error" not in got
    assert summary.new_tokens == sum(r["usage"]["completion_tokens"] for r in out.values())


def test_rows_in_flight_do_not_change_outputs(generator, tmp_path):
    rows = write_jsonl(tmp_path / "in.jsonl", job_rows(40, sampled=True))
    run_local(generator, rows, tmp_path / "one.jsonl", SAMPLED, max_running=1, progress=False)
    run_local(generator, rows, tmp_path / "many.jsonl", SAMPLED, max_running=16, progress=False)
    assert by_id(read_jsonl(tmp_path / "one.jsonl")) == by_id(read_jsonl(tmp_path / "many.jsonl"))


def test_bad_rows_get_errors_and_the_job_goes_on(generator, tmp_path):
    rows = job_rows(500, sampled=False, bad=True)
    summary = run_local(
        generator, write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl", GREEDY, progress=False
    )
    out = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(out) == 500 and summary.errors == len(BAD_ROWS)
    failed = {i: r["error"] for i, r in out.items() if "error" in r}
    assert set(failed) == set(BAD_ROWS)
    for row_id, (_, word) in BAD_ROWS.items():
        assert word in failed[row_id] and "\n" not in failed[row_id] and "text" not in out[row_id]
    assert all(
        r["text"] is not None and r["finish_reason"] in ("stop", "length") for i, r in out.items() if i not in failed
    )


def test_unusable_lines_and_duplicate_ids_are_error_rows(generator, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "好"}\nnot json\n\n[1, 2]\n{"id": "a", "prompt": "再"}\n{"id": 1.5, "prompt": "x"}\n'
    )
    run_local(generator, path, tmp_path / "out.jsonl", GREEDY, progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == 5  # the blank line is no row
    errors = {r["id"]: r["error"] for r in out if r["id"] != "a"}
    assert "not valid JSON" in errors[2] and "not an object" in errors[4] and "id must be" in errors[6]
    twice = {(r["prompt"], r.get("error")) for r in out if r["id"] == "a"}
    assert twice == {("好", None), ("再", "line 5: duplicate id 'a'; give every row its own id")}


class Stop(Exception):
    pass


def test_resume_after_an_interrupted_run_writes_each_row_once(generator, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(120, sampled=True, bad=False))
    run_local(generator, source, tmp_path / "whole.jsonl", SAMPLED, progress=False)
    seen = []

    def interrupt(row):
        seen.append(row)
        if len(seen) == 45:
            raise Stop

    with pytest.raises(Stop):
        run_local(generator, source, tmp_path / "out.jsonl", SAMPLED, progress=False, on_row=interrupt)
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 45
    summary = run_local(generator, source, tmp_path / "out.jsonl", SAMPLED, resume=True, progress=False)
    assert (summary.skipped, summary.written) == (45, 75)
    assert by_id(read_jsonl(tmp_path / "out.jsonl")) == by_id(read_jsonl(tmp_path / "whole.jsonl"))


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2_onnx.apps.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_cli_resume_after_sigterm(tiny_model, generator, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(500, sampled=True))
    options = [
        "--model",
        str(tiny_model),
        "--precision",
        "fp32",
        "--do-sample",
        "--max-new-tokens",
        "60",
        "--no-progress",
    ]
    out = tmp_path / "out.jsonl"
    proc = cli("batch", str(source), str(out), *options, "--max-running", "4")
    deadline = time.monotonic() + 300
    while (
        # bytes: the job may be half-way through a character's bytes when the file is read
        (not out.exists() or out.read_bytes().count(b"\n") < 30) and time.monotonic() < deadline and proc.poll() is None
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, "the job ended before it could be interrupted"
    partial = out.read_bytes().count(b"\n")
    assert 30 <= partial < 500
    done = cli("batch", str(source), str(out), *options, "--resume")
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    assert f"{500 - partial} rows written (0 with errors, {partial} already done)" in err
    run_local(generator, source, tmp_path / "whole.jsonl", {"do_sample": True, "max_new_tokens": 60}, progress=False)
    assert by_id(read_jsonl(out)) == by_id(read_jsonl(tmp_path / "whole.jsonl"))


def test_parquet_job_and_its_resume(generator, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    rows = job_rows(50, sampled=True)
    table = pa.Table.from_pylist([{"id": r.get("id", str(i + 1)), **r} for i, r in enumerate(rows)])
    pq.write_table(table, tmp_path / "in.parquet")
    run_local(
        generator,
        write_jsonl(tmp_path / "in.jsonl", table.to_pylist()),
        tmp_path / "ref.jsonl",
        SAMPLED,
        progress=False,
    )

    with pytest.raises(Stop):
        run_local(
            generator,
            tmp_path / "in.parquet",
            tmp_path / "out.parquet",
            SAMPLED,
            progress=False,
            on_row=lambda row: (_ for _ in ()).throw(Stop),
        )
    assert not (tmp_path / "out.parquet").exists() and (tmp_path / "out.parquet.partial.jsonl").exists()
    run_local(generator, tmp_path / "in.parquet", tmp_path / "out.parquet", SAMPLED, resume=True, progress=False)
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()
    got = by_id(pq.read_table(tmp_path / "out.parquet").to_pylist())
    want = by_id(read_jsonl(tmp_path / "ref.jsonl"))
    assert set(got) == set(want)
    for row_id, row in want.items():
        assert (got[row_id]["text"], got[row_id]["token_ids"], got[row_id]["usage"]) == (
            row["text"],
            row["token_ids"],
            row["usage"],
        )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "5"], "top_p must be in (0, 1]"),
        (["--max-running", "0"], "--max-running must be ≥ 1"),
    ],
)
def test_cli_bad_options_are_one_line_errors(tiny_model, tmp_path, args, message):
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(3, sampled=False))
    proc = cli("batch", str(source), str(tmp_path / "out.jsonl"), "--model", str(tiny_model), *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.count("\n") == 1 and err.startswith("gpt2-onnx: error: ") and message in err


def test_cli_refuses_to_overwrite_without_resume(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(3, sampled=False))
    (tmp_path / "out.jsonl").write_text(json.dumps({"id": "x", "text": "kept"}) + "\n")
    proc = cli("batch", str(source), str(tmp_path / "out.jsonl"), "--model", str(tiny_model), "--no-progress")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "pass --resume" in err
    assert read_jsonl(tmp_path / "out.jsonl") == [{"id": "x", "text": "kept"}]


# --- a bad row never stops a job (issue 20) --------------------------------------------------------

SURROGATE_ROWS = (
    '{"id": "lone", "prompt": "好\\udcff"}\n'  # JSON's escape of a lone surrogate
    '{"id": "ok-1", "prompt": "好"}\n'
)
NOT_UTF8 = (
    b'{"id": "byte", "prompt": "\xff\xfe"}\n{"id": "ok-2", "prompt": "\xe5\x86\x8d"}\n'  # bytes no UTF-8 text holds
)


def test_a_lone_surrogate_is_an_error_row_and_resume_goes_past_it(generator, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(SURROGATE_ROWS.encode() + NOT_UTF8)
    summary = run_local(generator, source, tmp_path / "out.jsonl", GREEDY, progress=False)
    assert (summary.written, summary.errors) == (4, 2)
    text = (tmp_path / "out.jsonl").read_bytes().decode("utf-8")  # OUTPUT is valid UTF-8
    out = by_id([json.loads(line) for line in text.splitlines()])
    assert out["lone"]["prompt"] == "好\udcff" and "not valid UTF-8" in out["lone"]["error"]  # written back as it was
    assert "not valid UTF-8" in out["byte"]["error"] and "text" not in out["byte"]
    assert out["ok-1"]["text"] and out["ok-2"]["text"] and {r["line"] for r in out.values()} == {1, 2, 3, 4}
    resumed = run_local(generator, source, tmp_path / "out.jsonl", GREEDY, resume=True, progress=False)
    assert (resumed.skipped, resumed.written) == (4, 0)


def test_a_lone_surrogate_in_a_parquet_output(generator, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    source = tmp_path / "in.jsonl"
    source.write_text(SURROGATE_ROWS + '{"id": "opt", "prompt": "好", "usage": "mine", "text": 5}\n')
    run_local(generator, source, tmp_path / "out.parquet", GREEDY, progress=False)
    out = by_id(pq.read_table(tmp_path / "out.parquet").to_pylist())
    assert out["lone"]["prompt"] == "好\\udcff" and "not valid UTF-8" in out["lone"]["error"]  # Parquet text is UTF-8
    assert "unknown option" in out["opt"]["error"] and out["opt"]["usage"] is None and out["opt"]["text"] is None
    assert out["ok-1"]["text"] and sorted(r["line"] for r in out.values()) == [1, 2, 3]


def test_a_duplicate_id_never_hides_a_row_from_resume(generator, tmp_path):
    # the first "a" runs long, its duplicate fails at once and "b" ends before it: the job stops there
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "a", "prompt": "好", "max_new_tokens": 40}, {"id": "a", "prompt": "再"}, {"id": "b", "prompt": "来"}],
    )
    seen = []

    def interrupt(row):
        seen.append(row["line"])
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        run_local(generator, source, tmp_path / "out.jsonl", GREEDY, progress=False, on_row=interrupt)
    assert sorted(seen) == [2, 3]
    summary = run_local(generator, source, tmp_path / "out.jsonl", GREEDY, resume=True, progress=False)
    assert (summary.skipped, summary.written) == (2, 1)
    out = {r["line"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert len(out) == 3 and len(out[1]["token_ids"]) == 40 and "duplicate id" in out[2]["error"]


def test_resume_refuses_an_output_without_lines(generator, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(3, sampled=False))
    old = json.dumps({"id": "row-0", "prompt": "这", "text": "x"}) + "\n"  # a row as versions before lines wrote it
    (tmp_path / "out.jsonl").write_text(old)
    with pytest.raises(Gpt2OnnxError, match='no output row with a "line".*run the job into a new OUTPUT'):
        run_local(generator, source, tmp_path / "out.jsonl", GREEDY, resume=True, progress=False)
    assert (tmp_path / "out.jsonl").read_text() == old


def test_cli_missing_input_leaves_no_output(tiny_model, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = cli("batch", str(tmp_path / "typo.jsonl"), str(out), "--model", str(tiny_model), "--no-progress")
    _, err = proc.communicate(timeout=120)
    assert (
        proc.returncode == 1
        and err
        == f"gpt2-onnx: error: input file {tmp_path / 'typo.jsonl'} does not exist; pass a JSONL or Parquet file\n"
    )
    assert list(tmp_path.iterdir()) == []  # the corrected rerun needs no --resume
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(2, sampled=False))
    proc = cli("batch", str(source), str(out), "--model", str(tiny_model), "--no-progress", "--max-new-tokens", "2")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and len(read_jsonl(out)) == 2, err


@pytest.mark.parametrize("output", ["out.jsonl", "out.parquet"])
def test_cli_output_on_a_full_disk_is_one_line(tiny_model, tmp_path, output):
    if output.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(3, sampled=False))
    journal = tmp_path / (output if output.endswith(".jsonl") else output + ".partial.jsonl")
    journal.symlink_to("/dev/full")  # every write: ENOSPC
    proc = cli("batch", str(source), str(tmp_path / output), "--model", str(tiny_model), "--no-progress", "--resume")
    _, err = proc.communicate(timeout=120)
    assert (
        proc.returncode == 1
        and err
        == f"gpt2-onnx: error: cannot write OUTPUT {journal}: No space left on device; "
        "choose a writable OUTPUT with free space (rows written so far are kept for --resume)\n"
    )


def read_only_refusal(directory) -> str | None:
    """Why `directory` cannot be mounted read-only in a private mount namespace here (None: it can)."""
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount --bind {directory} {directory}"], capture_output=True, text=True
    )
    return None if probe.returncode == 0 else f"mount namespaces are not permitted here: {probe.stderr.strip()}"


@pytest.mark.parametrize("output", ["out.jsonl", "out.parquet"])
def test_cli_output_on_a_read_only_file_system_is_one_line(tiny_model, tmp_path, output):
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    refusal = read_only_refusal(frozen)
    if refusal:
        pytest.skip(refusal)
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(3, sampled=False))
    command = " ".join(
        [
            sys.executable,
            "-m",
            "gpt2_onnx.apps.cli",
            "batch",
            str(source),
            str(frozen / output),
            "--model",
            str(tiny_model),
            "--no-progress",
        ]
    )
    # as root a read-only mode bit is no obstacle: a read-only mount is
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            f"mount --bind {frozen} {frozen} && mount -o remount,ro,bind {frozen} && exec {command}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert (
        proc.stderr.startswith(f"gpt2-onnx: error: cannot write OUTPUT {frozen / output}")
        and "Read-only file system" in proc.stderr
    )


def test_cli_prefix_cache_flag_reaches_the_model_load(tiny_int4, tmp_path):
    """`batch --prefix-cache-mb` is the same flag as serve's: an explicit cache on int4 is refused in one
    line naming the flag that turns it off (so the flag reaches the load), and without it int4 runs."""
    source = write_jsonl(tmp_path / "in.jsonl", job_rows(2, sampled=False))
    common = ("--model", str(tiny_int4), "--precision", "int4", "--no-progress", "--max-new-tokens", "2")
    proc = cli("batch", str(source), str(tmp_path / "a.jsonl"), *common, "--prefix-cache-mb", "8")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.count("\n") == 1 and "--prefix-cache-mb 0" in err, err
    assert not (tmp_path / "a.jsonl").exists()
    proc = cli("batch", str(source), str(tmp_path / "b.jsonl"), *common)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and len(read_jsonl(tmp_path / "b.jsonl")) == 2, err
