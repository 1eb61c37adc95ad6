"""`bench --only web`: batch-1 greedy decode speed and time to first token of the JavaScript package, in Node.js
(onnxruntime-node) and in headless Chromium (onnxruntime-web, WebAssembly, 1 and 2 threads), beside the Python
runtime on the same machine and transformers.js in the same browser on the export's FP32 ecosystem graph
(`model.onnx`, the anchor). Each row also says whether its greedy ids are the Python runtime's. Then where a
WebAssembly step's time goes, per precision: onnxruntime-web's profiler, in Node.js (the browser's kernels).

    export (every precision) ─> Python rows ─> Node.js rows (web/tools/bench-node.mjs)
      ─> a server of the page, the package and transformers.js (apps/web.py) ─> Chromium rows (bench-browser.mjs)
      ─> WebAssembly profiles (web/tools/profile-wasm.mjs, one thread)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from gpt2_onnx.apps import web as web_app
from gpt2_onnx.precisions import ECOSYSTEM_GRAPH, NAMES

from .profile import op_times, profile_table
from .synthetic import COMMON_HANZI

THREADS = (1, 2)
TJS = "@huggingface/transformers"


@dataclass(frozen=True)
class WebSpec:
    prompt_tokens: int = 32  # [CLS] included
    new_tokens: int = 64
    reps: int = 3


SMOKE_WEB = WebSpec(prompt_tokens=8, new_tokens=8, reps=1)


@dataclass(frozen=True)
class Row:
    engine: str  # "gpt2-onnx" or "transformers.js"
    where: str  # "Python", "Node.js" or "Chromium"
    runtime: str  # the onnxruntime that runs the graph
    precision: str
    threads: int
    time_to_first_token_ms: float  # medians over the reps
    decode_tokens_per_s: float
    same_ids_as_python: bool  # greedy ids equal the Python runtime's at this precision (FP32 for transformers.js)


def run_web(model_dir: Path, spec: WebSpec, log: Callable[[str], None]) -> dict:
    """Every row, measured one after another on `model_dir` (an export holding every precision)."""
    from gpt2_onnx import Generator

    web_app.check_web_dir()
    load_before = os.getloadavg()[0]  # other work on the machine skews the rows, two-thread ones first
    prompt_ids = Generator.load(model_dir, precision="fp32").encode(COMMON_HANZI[: spec.prompt_tokens - 1])
    rows, python_ids = [], {}
    for precision in NAMES:
        for threads in THREADS:
            ids, runs = _python(model_dir, precision, threads, prompt_ids, spec)
            python_ids[precision] = ids
            rows.append(_row("gpt2-onnx", "Python", "onnxruntime (Python)", precision, threads, runs, True))
            log(f"web: {rows[-1]}")
    for precision in NAMES:
        for threads in THREADS:
            args = dict(model_dir=str(model_dir), precision=precision, threads=threads, prompt_ids=prompt_ids)
            result = _node(["tools/bench-node.mjs", json.dumps({**args, **asdict(spec)})])
            same = result["token_ids"] == python_ids[precision]
            rows.append(_row("gpt2-onnx", "Node.js", "onnxruntime-node", precision, threads, result["runs"], same))
            log(f"web: {rows[-1]}")
    server = web_app.make_server(_mounts(model_dir), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    tjs_error = None
    try:
        for precision in NAMES:
            for threads in THREADS:
                page = dict(engine="gpt2-onnx", model_url=web_app.MODEL_PREFIX, precision=precision, threads=threads)
                result = _node(["tools/bench-browser.mjs", base, json.dumps({**page, **_args(prompt_ids, spec)})])
                same = result["token_ids"] == python_ids[precision]
                rows.append(_row("gpt2-onnx", "Chromium", "onnxruntime-web", precision, threads, result["runs"], same))
                log(f"web: {rows[-1]}")
        for threads in THREADS:
            page = dict(engine="transformers.js", threads=threads, tjs=_tjs_settings(model_dir))
            try:
                result = _node(["tools/bench-browser.mjs", base, json.dumps({**page, **_args(prompt_ids, spec)})])
            except RuntimeError as e:  # the anchor could not load or run the graph: say so in the report
                tjs_error = next((line for line in str(e).splitlines() if "Error" in line), str(e))[:600]
                log(f"web: transformers.js failed: {tjs_error}")
                break
            same = result["token_ids"] == python_ids["fp32"]
            rows.append(_row("transformers.js", "Chromium", _tjs_runtime(), "fp32", threads, result["runs"], same))
            log(f"web: {rows[-1]}")
    finally:
        server.shutdown()
        server.server_close()
    profiles = {}
    for precision in NAMES:
        args = dict(
            model_dir=str(model_dir), precision=precision, threads=1, prompt_ids=prompt_ids, new_tokens=spec.new_tokens
        )
        trace = _node_stdout(["tools/profile-wasm.mjs", json.dumps(args)])
        profiles[precision] = op_times(json.loads(trace))
        log(f"web: profiled {precision} in WebAssembly")
    return {
        "spec": asdict(spec),
        "rows": [asdict(r) for r in rows],
        "wasm_profiles": profiles,
        "transformers_js_error": tjs_error,
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
    }


def _python(model_dir: Path, precision: str, threads: int, prompt_ids: list[int], spec: WebSpec):
    from gpt2_onnx import Generator

    gen = Generator.load(model_dir, precision=precision, threads=threads)
    options = dict(max_new_tokens=spec.new_tokens, do_sample=False, stop_token_ids=())
    gen.generate_ids(prompt_ids, **options)  # warm-up
    results = [gen.generate_ids(prompt_ids, **options) for _ in range(spec.reps)]
    runs = [
        {"time_to_first_token_s": r.timings.time_to_first_token_s, "decode_tokens_per_s": r.timings.decode_tokens_per_s}
        for r in results
    ]
    return list(results[-1].token_ids), runs


def _row(engine, where, runtime, precision, threads, runs, same) -> Row:
    ttft = statistics.median(r["time_to_first_token_s"] for r in runs) * 1000
    rate = statistics.median(r["decode_tokens_per_s"] for r in runs)
    return Row(engine, where, runtime, precision, threads, round(ttft, 1), round(rate, 1), same)


def _args(prompt_ids: list[int], spec: WebSpec) -> dict:
    return dict(prompt_ids=prompt_ids, **asdict(spec))


def _node_stdout(args: list[str]) -> str:
    done = subprocess.run(["node", *args], cwd=web_app.WEB_DIR, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"node {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def _node(args: list[str]) -> dict:
    """A tool's result: the last line of its standard output, JSON."""
    return json.loads(_node_stdout(args).strip().splitlines()[-1])


def _mounts(model_dir: Path) -> list[web_app.Mount]:
    """The page's mounts, the timing pages, transformers.js with its own onnxruntime-web, and its view of the
    export (`tjs/model/`: config.json and onnx/model.onnx beside its weights, hard links to the export's files)."""
    modules = web_app.WEB_DIR / "node_modules"
    tjs = modules / TJS
    view = model_dir.parent / "transformers.js-view" / "model"
    (view / "onnx").mkdir(parents=True, exist_ok=True)
    data_file = _tjs_data_file(model_dir)
    for link, target in (
        (view / "config.json", model_dir / "config.json"),
        (view / "onnx" / ECOSYSTEM_GRAPH, model_dir / ECOSYSTEM_GRAPH),
        (view / "onnx" / data_file, model_dir / data_file),
    ):
        link.unlink(missing_ok=True)
        link.hardlink_to(target)  # not a symlink: a mount serves no path whose real place is outside it
    return [
        *web_app.mounts(model_dir),
        web_app.Mount("/web/tools/", web_app.WEB_DIR / "tools"),
        web_app.Mount("/tjs/dist/", tjs / "dist"),
        web_app.Mount("/tjs/ort/", _tjs_onnxruntime_web(tjs) / "dist"),
        web_app.Mount("/tjs/models/", view.parent),
    ]


def _tjs_onnxruntime_web(tjs: Path) -> Path:
    """The onnxruntime-web transformers.js depends on: its own copy, else the package's."""
    nested = tjs / "node_modules" / "onnxruntime-web"
    return nested if nested.is_dir() else web_app.WEB_DIR / "node_modules" / "onnxruntime-web"


def _tjs_runtime() -> str:
    tjs = web_app.WEB_DIR / "node_modules" / TJS
    version = json.loads((_tjs_onnxruntime_web(tjs) / "package.json").read_text())["version"]
    return f"onnxruntime-web {version} (transformers.js {json.loads((tjs / 'package.json').read_text())['version']})"


def _tjs_data_file(model_dir: Path) -> str:
    from gpt2_onnx.manifest import read_manifest

    return read_manifest(model_dir).variants["fp32"].data_file


def _tjs_settings(model_dir: Path) -> dict:
    """What bench-page.js needs to load transformers.js and point it at the export, offline."""
    ort = "/tjs/ort/ort.webgpu.min.mjs"  # transformers.js imports onnxruntime-web/webgpu and onnxruntime-common
    return {
        "module": "/tjs/dist/transformers.web.js",
        "models": "/tjs/models/",
        "model": "model",
        "data_file": _tjs_data_file(model_dir),
        "import_map": {"onnxruntime-web/webgpu": ort, "onnxruntime-common": ort},
        "wasm_paths": {
            "mjs": "/tjs/ort/ort-wasm-simd-threaded.asyncify.mjs",
            "wasm": "/tjs/ort/ort-wasm-simd-threaded.asyncify.wasm",
        },
    }


def web_markdown(doc: dict) -> str:
    """The report: one table, the ratio to transformers.js per thread count, and what the rows mean."""
    rows = doc["rows"]
    anchor = {r["threads"]: r["decode_tokens_per_s"] for r in rows if r["engine"] == "transformers.js"}
    lines = [
        "# Browser and Node.js: batch-1 greedy decoding",
        "",
        f"`{doc['command']}` on {doc['machine']['cpu']} ({doc['machine']['isa']}); "
        f"prompt {doc['spec']['prompt_tokens']} tokens, {doc['spec']['new_tokens']} new tokens, median of "
        f"{doc['spec']['reps']} runs after a warm-up; full-size random-weights model; the machine's 1-minute load "
        f"average {doc['load_average']['before']:.1f} before the run, {doc['load_average']['after']:.1f} after "
        f"(on {doc['machine']['cores']} cores: above 0 means other work shared them).",
        "",
        "| engine | where | runtime | precision | threads | decode tok/s | × transformers.js | TTFT ms | "
        "greedy ids = Python's |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratio = r["decode_tokens_per_s"] / anchor[r["threads"]] if r["threads"] in anchor else None
        lines.append(
            f"| {r['engine']} | {r['where']} | {r['runtime']} | {r['precision']} | {r['threads']} | "
            f"{r['decode_tokens_per_s']:.1f} | {'—' if ratio is None else f'{ratio:.2f}×'} | "
            f"{r['time_to_first_token_ms']:.0f} | {'yes' if r['same_ids_as_python'] else 'no'} |"
        )
    if doc.get("transformers_js_error"):
        lines += ["", f"transformers.js could not run the export's model.onnx: `{doc['transformers_js_error']}`"]
    lines += [
        "",
        "## Where a WebAssembly decode step's time goes",
        "",
        "onnxruntime-web's profiler, one thread, in Node.js (the browser's WebAssembly kernels and the page's session "
        f"options, `web/tools/profile-wasm.mjs`), over the decode steps of one {doc['spec']['new_tokens']}-token "
        "generation (the profiler's own cost is in every node's time: compare shares).",
        "",
        *profile_table(doc["wasm_profiles"]),
    ]
    return "\n".join(lines) + "\n"


def web_plot(doc: dict, path: Path) -> None:
    """Decode tokens/s per row, one bar each, grouped by where it runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    labels = [f"{r['where']}\n{r['engine']}\n{r['precision']} ×{r['threads']}" for r in rows]
    colors = {"Python": "#4c72b0", "Node.js": "#55a868", "Chromium": "#c44e52"}
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.6), 4.5))
    bars = ax.bar(range(len(rows)), [r["decode_tokens_per_s"] for r in rows])
    for bar, r in zip(bars, rows):
        bar.set_color("#8172b2" if r["engine"] == "transformers.js" else colors[r["where"]])
    ax.set_xticks(range(len(rows)), labels, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("decode tokens/s (batch 1, log scale)")
    ax.set_title("gpt2-onnx in Python, Node.js and Chromium; transformers.js in Chromium (purple)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
