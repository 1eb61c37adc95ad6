"""Batch jobs on Ray Data equal the local job row for row. One Ray cluster for the module:
tests/ray_jobs_script.py runs every Ray job in one subprocess, inside a private network
namespace that holds only loopback (so Ray binds 127.0.0.1 and no packet leaves), and
prints their summaries; the tests compare its output files with local runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from batch_rows import BAD_ROWS, by_id, job_rows, read_jsonl, write_jsonl

from gpt2_onnx.apps.batch import run_local

pytestmark = pytest.mark.slow  # a Ray cluster: CI runs these, the fast tier does not

pytest.importorskip("ray.data", reason="the ray extra is not installed")
GREEDY = {"do_sample": False, "max_new_tokens": 6}
SAMPLED = {"do_sample": True, "max_new_tokens": 6, "temperature": 0.9}
SCRIPT = Path(__file__).with_name("ray_jobs_script.py")


def namespace_refusal() -> str | None:
    """Why a private network namespace cannot be made here (None: it can)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is missing"
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"network namespaces are not permitted here: {probe.stderr.strip()}"


def run_in_namespace(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DISABLE_USAGE_STATS": "1"}
    command = "ip link set lo up && exec " + " ".join(map(_quote, args))
    proc = subprocess.Popen(
        ["unshare", "--net", "bash", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the namespace's every process: the script, Ray's daemons and workers
        out, err = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def ray_jobs(tiny_model, tmp_path_factory):
    refusal = namespace_refusal()
    if refusal:
        pytest.skip(refusal)
    work = tmp_path_factory.mktemp("ray-jobs")
    write_jsonl(work / "in-greedy.jsonl", job_rows(500, sampled=False))
    write_jsonl(work / "in-sampled.jsonl", job_rows(500, sampled=True))
    write_jsonl(work / "in-bad.jsonl", job_rows(500, sampled=False, bad=True))
    proc = run_in_namespace([sys.executable, str(SCRIPT), str(tiny_model), str(work)], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def local_jobs(tiny_model, generators, tmp_path_factory, ray_jobs):
    work, _ = ray_jobs
    local = tmp_path_factory.mktemp("local-jobs")
    generator = generators(tiny_model, "fp32")
    for name, options in (("greedy", GREEDY), ("sampled", SAMPLED), ("bad", GREEDY)):
        run_local(generator, work / f"in-{name}.jsonl", local / f"{name}.jsonl", options, progress=False)
    return local


def test_ray_binds_loopback_only(ray_jobs):
    assert ray_jobs[1]["node"] == "127.0.0.1"


@pytest.mark.parametrize("name", ["greedy", "sampled"])
def test_ray_job_equals_the_local_job_row_for_row(ray_jobs, local_jobs, name):
    work, results = ray_jobs
    on_ray, local = by_id(read_jsonl(work / f"{name}.jsonl")), by_id(read_jsonl(local_jobs / f"{name}.jsonl"))
    assert len(on_ray) == 500 and results[name]["written"] == 500 and results[name]["errors"] == 0
    assert on_ray == local
    assert results[name]["new_tokens"] == sum(r["usage"]["completion_tokens"] for r in local.values()) > 0
    constrained = [r for r in on_ray.values() if r["line"] % 11 == 4]  # job_rows: every eleventh row's constraint
    assert constrained and all(re.fullmatch("[0-9]{1,4}", r["text"]) for r in constrained)


def test_ray_job_reports_exactly_the_bad_rows(ray_jobs, local_jobs):
    work, results = ray_jobs
    out = by_id(read_jsonl(work / "bad.jsonl"))
    failed = {i for i, r in out.items() if "error" in r}
    assert failed == set(BAD_ROWS) and results["bad"]["errors"] == len(BAD_ROWS)
    assert len(out) == 500 and all(r["text"] is not None for i, r in out.items() if i not in failed)
    assert out == by_id(read_jsonl(local_jobs / "bad.jsonl"))


def test_ray_resume_after_an_interrupted_run_writes_each_row_once(ray_jobs, local_jobs):
    work, results = ray_jobs
    assert results["interrupted"] == "after 120 rows" and not results["staging_left"]
    assert (results["resumed"]["skipped"], results["resumed"]["written"]) == (120, 380)
    assert by_id(read_jsonl(work / "resumed.jsonl")) == by_id(read_jsonl(local_jobs / "sampled.jsonl"))


def test_cli_joins_a_cluster_and_writes_parquet(ray_jobs, local_jobs):
    pq = pytest.importorskip("pyarrow.parquet")
    work, results = ray_jobs
    assert results["cli"]["returncode"] == 0, results["cli"]
    assert f"500 rows written ({len(BAD_ROWS)} with errors" in results["cli"]["stderr_tail"][0]
    got = by_id(pq.read_table(work / "cli.parquet").to_pylist())
    want = by_id(read_jsonl(local_jobs / "bad.jsonl"))
    assert set(got) == {str(i) for i in want}
    for row_id, row in want.items():
        assert (got[str(row_id)]["token_ids"], got[str(row_id)]["error"]) == (row.get("token_ids"), row.get("error"))


def test_a_ray_job_loads_the_model_as_a_local_one(tiny_model, tiny_int4, tmp_path):
    """The actors load `ModelSettings` (the prefix cache on by default where the precision allows it); a
    prefix cache the precision cannot have is refused before any cluster starts, nothing written."""
    import gpt2_onnx.apps.ray_data as ray_data
    from gpt2_onnx import GenerationOptionError
    from gpt2_onnx.apps.settings import RAY_THREADS, ModelSettings

    source = write_jsonl(tmp_path / "in.jsonl", job_rows(3, sampled=False))
    with pytest.raises(GenerationOptionError, match="int4 is not: .*prefix_cache_mb=0"):
        ray_data.run_ray(str(tiny_int4), "int4", source, tmp_path / "out.jsonl", GREEDY, prefix_cache_mb=8)
    assert not (tmp_path / "out.jsonl").exists()
    settings = ModelSettings(tiny_model, "int8").on_ray()
    assert settings.threads == RAY_THREADS and settings.model == str(tiny_model)
    assert ray_data.GeneratorActor(settings, GREEDY, 4).generator.prefix_cache is not None
    off = ModelSettings(str(tiny_model), "int8", prefix_cache_mb=0).on_ray()
    assert ray_data.GeneratorActor(off, GREEDY, 4).generator.prefix_cache is None
