"""Batch-job throughput: the local job against Ray Data with 1 and 2 replicas (1 thread each).

Every run is the same job (greedy, exactly `new_tokens` per row: min_new_tokens keeps
random weights from stopping early), timed from the call to the last row written, so
Ray's figures include starting its actors and loading a model in each. Ray needs a private
network namespace here (docs/scaling.md): run this module as

    unshare --net bash -c 'ip link set lo up; RAY_AUTH_MODE=disabled RAY_DISABLE_USAGE_STATS=1 \\
        python -m gpt2_onnx.benchmarks.batch_jobs MODEL_DIR --rows 400 --new-tokens 16'
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from gpt2_onnx.apps.batch_io import DEFAULT_MAX_RUNNING

WORDS = "这是很久之前的事情了我们在山上看见一条河流向远方的城市"


@dataclass(frozen=True)
class JobFigure:
    """One run of the job."""

    mode: str  # "local", "ray ×1", "ray ×2"
    replicas: int
    rows: int
    new_tokens: int
    seconds: float
    tokens_per_s: float


def write_job(path: Path, rows: int) -> Path:
    """`rows` prompts of 4 to 35 characters."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(
                json.dumps({"id": i, "prompt": (WORDS * 3)[i % len(WORDS) :][: 4 + i % 32]}, ensure_ascii=False) + "\n"
            )
    return path


def run_batch_jobs(
    model_dir: Path,
    precision: str = "int8",
    rows: int = 400,
    new_tokens: int = 16,
    max_running: int = DEFAULT_MAX_RUNNING,
    replicas: tuple[int, ...] = (1, 2),
) -> list[JobFigure]:
    """Tokens/s of the job locally (1 thread) and on a new local Ray cluster with each replica count.
    Both load the model as `gpt2-onnx batch` does (`ModelSettings`: its prefix cache included)."""
    import ray

    from gpt2_onnx.apps.batch import run_local
    from gpt2_onnx.apps.ray_data import run_ray
    from gpt2_onnx.apps.settings import ModelSettings

    options = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    figures = []
    with tempfile.TemporaryDirectory() as work:
        source = write_job(Path(work) / "in.jsonl", rows)
        generator = ModelSettings(str(model_dir), precision, threads=1).load()
        summary = run_local(
            generator, source, Path(work) / "local.jsonl", options, max_running=max_running, progress=False
        )
        figures.append(
            JobFigure("local", 0, summary.written, summary.new_tokens, summary.seconds, summary.tokens_per_s)
        )
        ray.init(num_cpus=max(replicas), include_dashboard=False, log_to_driver=False)
        try:
            for n in replicas:
                summary = run_ray(
                    model_dir,
                    precision,
                    source,
                    Path(work) / f"ray{n}.jsonl",
                    options,
                    replicas=n,
                    threads=1,
                    max_running=max_running,
                    batch_size=max(64, rows // (4 * n)),
                    progress=False,
                )
                figures.append(
                    JobFigure(
                        f"ray ×{n}", n, summary.written, summary.new_tokens, summary.seconds, summary.tokens_per_s
                    )
                )
        finally:
            ray.shutdown()
    return figures


def markdown(figures: list[JobFigure]) -> str:
    """A table of the runs, with each one's tokens/s against the local job's."""
    local = figures[0].tokens_per_s
    lines = ["| mode | replicas | rows | new tokens | seconds | tokens/s | vs local |", "|---|---|---|---|---|---|---|"]
    for f in figures:
        lines.append(
            f"| {f.mode} | {f.replicas or '-'} | {f.rows} | {f.new_tokens} | {f.seconds:.1f} | {f.tokens_per_s:.1f} | "
            f"{f.tokens_per_s / local:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    figures = run_batch_jobs(args.model_dir, args.precision, args.rows, args.new_tokens)
    print(markdown(figures))
    if args.out:
        args.out.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")


if __name__ == "__main__":
    main()
