"""`gpt2-onnx bench`: build or take a checkpoint, measure, write results/ (JSON, markdown, PNG)."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys

from pathlib import Path

from gpt2_onnx.hub import cache_root

from .report import speed_markdown, speed_plot
from .spec import SMOKE, BenchSpec
from .speed import run_speed


def _log(message: str) -> None:
    print(f"gpt2-onnx bench: {message}", file=sys.stderr, flush=True)


def default_checkpoint(smoke: bool) -> Path:
    """The full-size distil architecture (tiny for --smoke) with random weights, built once."""
    from gpt2_onnx.export.synthetic import TINY, SyntheticSpec, write_uer_checkpoint

    name = "tiny-random" if smoke else "distil-random"
    path = cache_root() / "bench" / name
    if not (path / "config.json").exists():
        _log(f"building {name} checkpoint in {path}")
        write_uer_checkpoint(path, TINY if smoke else SyntheticSpec())
    return path


def run_bench(
    checkpoint: Path | None, out: Path, smoke: bool = False, threads: int | None = None,
    engines: list[str] | None = None, spec: BenchSpec | None = None, work: Path | None = None,
) -> dict:
    checkpoint = (checkpoint or default_checkpoint(smoke)).resolve()
    spec = spec or (SMOKE if smoke else BenchSpec())
    key = hashlib.sha256(str(checkpoint).encode()).hexdigest()[:12]
    work = work or cache_root() / "bench" / f"artifacts-{checkpoint.name}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    doc = run_speed(checkpoint, work, spec, threads, engines, log=_log)
    command = "gpt2-onnx bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "gpt2-onnx bench"
    doc["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    (out / "speed.md").write_text(speed_markdown(doc, command))
    speed_plot(doc, out / "speed.png")
    _log(f"wrote {out / 'speed.json'}, {out / 'speed.md'}, {out / 'speed.png'}")
    return doc


