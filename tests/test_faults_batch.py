"""Fault injection on batch jobs (issue 20): bad rows, SIGKILL at random points, a step that raises.

A job of 2,000 rows, 5 % of them bad (lone surrogates, bad options, over-long prompts, no
prompt, lines that are not JSON), is killed with SIGKILL at three seeded-random points and
resumed: every input line is answered exactly once, the bad ones by error rows, and the
output equals an uninterrupted run's. Tiny model, a few new tokens per row.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from gpt2_onnx.apps.batch import run_local
from gpt2_onnx.sequences import Active

ROWS = 2000
BAD_SHARE = 0.05
SEED = 20
OPTIONS = {"do_sample": False, "max_new_tokens": 3}
WORDS = "这是很久之前的事情了我们在山上看见一条河流向远方的城市"
# kind of bad row → (its JSONL line, a phrase its error names); the tiny model holds 128 positions
BAD_KINDS = {
    "surrogate": ('{"id": "s%d", "prompt": "河\\udcff流"}', "not valid UTF-8"),
    "option": ('{"id": "o%d", "prompt": "山", "top_p": 5}', "top_p"),
    "too long": ('{"id": "l%d", "prompt": "' + "城" * 300 + '"}', "prompt"),
    "no prompt": ('{"id": "p%d", "promt": "山"}', "no prompt"),
    "not JSON": ('{"id": "j%d", "prompt": "山"', "not valid JSON"),
}


def job_lines(rng: random.Random) -> tuple[list[str], dict[int, str]]:
    """The input's lines, and the kind of each bad line (by 1-based line number)."""
    bad = rng.sample(range(1, ROWS + 1), int(ROWS * BAD_SHARE))
    kinds = {line: list(BAD_KINDS)[k % len(BAD_KINDS)] for k, line in enumerate(bad)}
    lines = []
    for line in range(1, ROWS + 1):
        if line in kinds:
            lines.append(BAD_KINDS[kinds[line]][0] % line)
            continue
        row = {"prompt": (WORDS * 2)[line % len(WORDS) :][: 1 + line % 12], "seed": line}
        if line % 3:  # the others take the line number as their id
            row["id"] = f"row-{line}"
        if line % 4 == 0:
            row["do_sample"] = True
        lines.append(json.dumps(row, ensure_ascii=False))
    return lines, kinds


def by_line(path: Path) -> dict[int, dict]:
    """OUTPUT's rows keyed by input line; fails on a line answered twice."""
    rows = [json.loads(text) for text in path.read_text(encoding="utf-8").splitlines()]
    twice = [line for line, n in Counter(r["line"] for r in rows).items() if n > 1]
    assert not twice, f"input lines answered twice: {twice[:10]}"
    return {r["line"]: r for r in rows}


def start_job(model: Path, source: Path, out: Path, resume: bool) -> subprocess.Popen:
    args = [
        "batch",
        str(source),
        str(out),
        "--model",
        str(model),
        "--precision",
        "fp32",
        "--no-do-sample",
        "--max-new-tokens",
        str(OPTIONS["max_new_tokens"]),
        "--max-running",
        "8",
        "--no-progress",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2_onnx.apps.cli", *args, *(["--resume"] if resume else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def written(out: Path) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


def test_a_job_with_bad_rows_killed_three_times_answers_every_line_once(tiny_model, generators, tmp_path):
    rng = random.Random(SEED)
    lines, kinds = job_lines(rng)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(text + "\n" for text in lines), encoding="utf-8")
    whole = run_local(generators(tiny_model, "fp32"), source, tmp_path / "whole.jsonl", OPTIONS, progress=False)
    assert (whole.written, whole.errors) == (ROWS, len(kinds))

    out = tmp_path / "out.jsonl"
    for kill in range(3):
        # a seeded point in the next third of what is left, counted in rows written
        target = written(out) + rng.randint(1, (ROWS - written(out)) // 3)
        proc = start_job(tiny_model, source, out, resume=kill > 0)
        deadline = time.monotonic() + 300
        while written(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"the job ended before kill {kill + 1}: {err[-2000:]}"
    proc = start_job(tiny_model, source, out, resume=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert err.count("\n") == 1 and "already done" in err

    got, want = by_line(out), by_line(tmp_path / "whole.jsonl")
    assert sorted(got) == list(range(1, ROWS + 1))
    assert {line for line, row in got.items() if "error" in row} == set(kinds)
    for line, kind in kinds.items():
        assert BAD_KINDS[kind][1] in got[line]["error"] and got[line]["error"].startswith(f"line {line}: ")
    assert got == want


def test_a_row_that_raises_while_it_decodes_fails_alone(tiny_model, generators, tmp_path, monkeypatch):
    generator = generators(tiny_model, "fp32")
    rows = [
        {
            "id": f"r{i}",
            "prompt": (WORDS * 2)[i:][: 1 + i % 9],
            "max_new_tokens": 4 + i % 5,
            "seed": i,
            "do_sample": i % 2 == 0,
        }
        for i in range(40)
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run_local(generator, source, tmp_path / "want.jsonl", {}, max_running=8, progress=False)
    poison = {7, 23}  # seeds of the rows that raise, each in a step with seven others
    advance = Active.advance

    def raises_on_its_second_token(self, logits, rows, codec):
        if self.request.config.seed in poison and self.new_tokens == 1:
            raise RuntimeError("injected fault")
        return advance(self, logits, rows, codec)

    monkeypatch.setattr(Active, "advance", raises_on_its_second_token)
    summary = run_local(generator, source, tmp_path / "out.jsonl", {}, max_running=8, progress=False)
    assert (summary.written, summary.errors) == (40, 2)
    got, want = by_line(tmp_path / "out.jsonl"), by_line(tmp_path / "want.jsonl")
    for seed in poison:
        assert got[seed + 1]["error"] == f"line {seed + 1}: decoding failed: RuntimeError: injected fault"
    # the rows beside them, started over, end as if nothing had happened
    assert {line: row for line, row in got.items() if line - 1 not in poison} == {
        line: row for line, row in want.items() if line - 1 not in poison
    }


def test_a_row_whose_answer_cannot_be_written_fails_alone(tiny_model, generators, tmp_path, monkeypatch):
    """A failure while a finished row's output is built (not in the engine) is that row's error row too:
    no row is lost."""
    from gpt2_onnx.apps import batch

    generator = generators(tiny_model, "fp32")
    rows = [{"id": f"r{i}", "prompt": WORDS[: 1 + i % 5], "max_new_tokens": 3, "seed": i} for i in range(12)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result_row = batch.result_row

    def fails_for_r5(row, *args):
        if row.id == "r5":
            raise RuntimeError("injected output fault")
        return result_row(row, *args)

    monkeypatch.setattr(batch, "result_row", fails_for_r5)
    summary = run_local(generator, source, tmp_path / "out.jsonl", {}, max_running=4, progress=False)
    got = by_line(tmp_path / "out.jsonl")
    assert (summary.written, summary.errors) == (12, 1) and sorted(got) == list(range(1, 13))
    assert got[6]["error"] == "line 6: decoding failed: RuntimeError: injected output fault"
