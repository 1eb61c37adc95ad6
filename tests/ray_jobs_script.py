"""Every Ray Data job of tests/test_ray.py, on one local Ray cluster; run inside a private
network namespace by that module. Prints one JSON object: each job's summary (or error)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import ray

import gpt2_onnx.apps.ray_data as ray_data

GREEDY = {"do_sample": False, "max_new_tokens": 6}
SAMPLED = {"do_sample": True, "max_new_tokens": 6, "temperature": 0.9}


class Interrupt(Exception):
    pass


def interrupted_job(model: str, work: Path, after: int) -> str:
    """A job stopped by an exception after `after` rows were written; returns what it raised."""
    write = ray_data.OutputWriter.write
    written = []

    def stop_after(self, row):
        if len(written) == after:
            raise Interrupt(f"after {after} rows")
        written.append(row)
        write(self, row)

    ray_data.OutputWriter.write = stop_after
    try:
        ray_data.run_ray(
            model, "fp32", work / "in-sampled.jsonl", work / "resumed.jsonl", SAMPLED, replicas=2, progress=False
        )
    except Interrupt as e:
        return str(e)
    finally:
        ray_data.OutputWriter.write = write
    return "not interrupted"


def main(model: str, work: Path) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {"node": ray.nodes()[0]["NodeManagerAddress"]}

    def job(name: str, source: str, options: dict, **kwargs) -> None:
        summary = ray_data.run_ray(
            model, "fp32", work / f"in-{source}", work / f"{name}.jsonl", options, progress=False, **kwargs
        )
        results[name] = asdict(summary)

    job("greedy", "greedy.jsonl", GREEDY, replicas=2, batch_size=32)
    job("sampled", "sampled.jsonl", SAMPLED, replicas=2)
    job("bad", "bad.jsonl", GREEDY, replicas=1)
    results["interrupted"] = interrupted_job(model, work, after=120)
    results["staging_left"] = (work / ("resumed.jsonl" + ray_data.STAGING_SUFFIX)).exists()
    job("resumed", "sampled.jsonl", SAMPLED, replicas=2, resume=True)
    # the command line, joining this cluster by its address
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2_onnx.apps.cli",
            "batch",
            str(work / "in-bad.jsonl"),
            str(work / "cli.parquet"),
            "--model",
            model,
            "--precision",
            "fp32",
            "--no-do-sample",
            "--max-new-tokens",
            "6",
            "--no-progress",
            "--ray",
            ray.get_runtime_context().gcs_address,
            "--replicas",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    results["cli"] = {"returncode": cli.returncode, "stderr_tail": cli.stderr.strip().splitlines()[-1:]}
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
