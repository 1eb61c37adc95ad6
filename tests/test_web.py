"""The JavaScript package (`web/`) decodes like the Python runtime, in Node.js and in a real headless Chromium.

Python greedy-decodes a model directory; the package does the same with onnxruntime-node (`node --test web/test/`,
every case) and, through the page of `gpt2-onnx web`, with onnxruntime-web in Chromium; the ids are compared.
Node.js and `web/node_modules` (installed here with `npm ci` when missing) are needed for the first, Chromium for
the second: where one is missing its tests skip with the reason, unless GPT2_ONNX_REQUIRE_BROWSER=1 (CI), which
makes a missing browser or dependency a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gpt2_onnx.apps import cli
from gpt2_onnx.apps import web as web_app
from gpt2_onnx.apps.web_contract import CONTRACT_PATH, contract_module
from gpt2_onnx.benchmarks.synthetic import TINY
from gpt2_onnx.precisions import NAMES

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "web"
REQUIRE = os.environ.get("GPT2_ONNX_REQUIRE_BROWSER") == "1"
PROMPTS = ["这是很久之前的事情了", "hello world 中文模型测试，今天天气晴朗", ""]
GREEDY = {"max_new_tokens": 20, "do_sample": False}
# WebAssembly's float kernels round a few ulps apart from x86's (LayerNormalization first); INT8's per-token
# activation quantization turns that into logits up to ~0.3 apart at full size, which flips a greedy choice where
# Python's two best tokens are this close. Such a flip is the only difference the browser test allows at INT8.
NEAR_TIE = 0.1


def unavailable(reason: str):
    """Skip with the reason, or fail where CI requires the browser tests to run."""
    if REQUIRE:
        pytest.fail(f"{reason} (GPT2_ONNX_REQUIRE_BROWSER=1 requires it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """web/node_modules, installed by `npm ci` (package-lock.json) if it is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("Node.js ≥ 20 and npm are not installed: the JavaScript package's tests need them")
    if not all((WEB / "node_modules" / p).is_dir() for p in (*web_app.BROWSER_PACKAGES, "onnxruntime-node")):
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, capture_output=True, text=True)
        if done.returncode != 0:
            unavailable(f"`{web_app.NPM_INSTALL}` failed: {done.stderr.strip().splitlines()[-1:]}")
    return WEB / "node_modules"


@pytest.fixture(scope="session")
def chromium(node_modules) -> str:
    given = os.environ.get("CHROMIUM")
    candidates = [given] if given else ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
    found = next((p for p in candidates if Path(p).exists()), None)
    if found is None:
        unavailable("Chromium is not installed: apt-get install -y chromium")
    return found


def python_cases(generators, model_dir: Path, precision: str, option_sets) -> list[dict]:
    """What the Python runtime generates for each prompt and option set."""
    gen = generators(model_dir, precision)
    cases = []
    for prompt in PROMPTS:
        for options in option_sets:
            r = gen.generate(prompt, **options)
            cases.append(
                dict(
                    model_dir=str(model_dir),
                    precision=precision,
                    prompt=prompt,
                    options=options,
                    token_ids=list(r.token_ids),
                    text=r.text,
                    finish_reason=r.finish_reason,
                )
            )
    return cases


def run_node_tests(cases: list[dict], tmp_path: Path) -> None:
    (tmp_path / "cases.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "GPT2_ONNX_WEB_CASES": str(tmp_path / "cases.json")}
    done = subprocess.run(["node", "--test", "test/"], cwd=WEB, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# skipped 0" in done.stdout, done.stdout[-3000:]


def test_the_contract_is_the_runtimes():
    assert (REPO / CONTRACT_PATH).read_text(encoding="utf-8") == contract_module(), (
        "web/src/contract.js is stale: python -m gpt2_onnx.apps.web_contract > web/src/contract.js"
    )


def test_node_package_matches_python_on_the_tiny_model(tiny_model, tiny_int4, generators, node_modules, tmp_path):
    gen = generators(tiny_model, "int8")
    stop_id = gen.generate(PROMPTS[0], **GREEDY).token_ids[4]
    option_sets = [
        GREEDY,
        dict(max_new_tokens=24, do_sample=False, repetition_penalty=1.3, no_repeat_ngram_size=2),
        dict(max_new_tokens=16, do_sample=False, logit_bias={"5": 4.0}, presence_penalty=0.5, frequency_penalty=0.3),
        dict(max_new_tokens=30, do_sample=False, stop=["。", "z"], min_new_tokens=3),
        dict(max_new_tokens=20, do_sample=False, stop_token_ids=[stop_id]),
    ]
    cases = [c for p in ("fp32", "int8") for c in python_cases(generators, tiny_model, p, option_sets)]
    cases += python_cases(generators, tiny_int4, "int4", [GREEDY])
    assert {c["finish_reason"] for c in cases} == {"length", "stop", "stop_string"}
    run_node_tests(cases, tmp_path)


def test_node_package_matches_python_at_full_size(full_model, generators, node_modules, tmp_path):
    options = [GREEDY, dict(max_new_tokens=20, do_sample=False, repetition_penalty=1.2, no_repeat_ngram_size=3)]
    cases = [c for p in ("fp32", "int8", "int4") for c in python_cases(generators, full_model, p, options)]
    assert all(len(set(c["token_ids"])) > 5 for c in cases)  # varied paths, not one repeated token
    run_node_tests(cases, tmp_path)


class PageServer:
    """`gpt2-onnx web`'s server over a model directory, on a free loopback port, in a thread."""

    def __init__(self, model_dir: Path):
        self.server = web_app.make_server(web_app.mounts(model_dir), 0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def page_run(url: str, prompt: str, screenshot: Path, chromium: str) -> dict:
    done = subprocess.run(
        ["node", "tools/page-run.mjs", url, "--prompt", prompt, "--max-new-tokens", str(GREEDY["max_new_tokens"])]
        + ["--screenshot", str(screenshot)],
        cwd=WEB,
        env={**os.environ, "CHROMIUM": chromium},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_page(
    model_dir: Path,
    generators,
    chromium: str,
    tmp_path: Path,
    exact: tuple[str, ...],
    near: tuple[str, ...],
    device: str = "wasm",
):
    """The page generates Python's greedy ids on `device`: equal for the `exact` precisions; for the `near` ones
    equal up to where Python's own two best tokens are within NEAR_TIE, and the page's token is then that runner-up."""
    server = PageServer(model_dir)
    try:
        for precision in exact + near:
            gen = generators(model_dir, precision)
            for k, prompt in enumerate(PROMPTS[:2]):
                expected = list(gen.generate(prompt, **GREEDY).token_ids)
                shot = tmp_path / f"page-{precision}-{device}-{k}.png"
                url = f"{server.url}{web_app.PAGE}?precision={precision}&device={device}&threads=1"
                got = page_run(url, prompt, shot, chromium)
                assert f"on {device}" in got["loaded"]
                assert got["isolated"] and shot.stat().st_size > 10_000
                assert got["text"].startswith(prompt) and f"{len(expected)} tokens" in got["stats"]
                if precision in exact or got["ids"] == expected:
                    assert got["ids"] == expected, (precision, prompt)
                    continue
                j = next(i for i, (a, b) in enumerate(zip(got["ids"], expected)) if a != b)
                logits = gen.decoder.score(np.array([gen.encode(prompt) + expected[:j]]))[0, -1]
                gap = logits[expected[j]] - logits[got["ids"][j]]
                assert abs(gap) <= NEAR_TIE, (
                    f"{precision} {prompt!r}: token {j} differs by {gap:.3f} in Python's logits"
                )
    finally:
        server.close()


def test_page_in_chromium_matches_python_on_the_tiny_model(tiny_model, generators, chromium, tmp_path):
    check_page(tiny_model, generators, chromium, tmp_path, exact=("fp32", "int8"), near=())


def test_page_in_chromium_matches_python_at_full_size(full_model, generators, chromium, tmp_path):
    check_page(full_model, generators, chromium, tmp_path, exact=("fp32",), near=("int8",))


def test_page_on_webgpu_matches_python_on_the_tiny_model(tiny_model, tiny_int4, generators, chromium, tmp_path):
    """`device: "webgpu"` (SwiftShader's adapter in the test browser): FP32 exact; INT4 runs (its WebGPU
    MatMulNBits keeps FP32 activations, so not the CPU's INT4 to the bit); INT8 refused, naming the fix."""
    check_page(tiny_model, generators, chromium, tmp_path, exact=("fp32",), near=(), device="webgpu")
    check_page(tiny_int4, generators, chromium, tmp_path, exact=(), near=("int4",), device="webgpu")
    server = PageServer(tiny_model)
    try:
        url = f"{server.url}{web_app.PAGE}?precision=int8&device=webgpu"
        with pytest.raises(AssertionError, match="precision int8 does not run on WebGPU.*use precision fp32 or int4"):
            page_run(url, PROMPTS[0], tmp_path / "int8-webgpu.png", chromium)
    finally:
        server.close()


def test_the_server_gives_the_page_isolation_and_only_the_model_files(tiny_model, tmp_path):
    (tiny_model.parent / "secret.txt").write_text("no")
    server = PageServer(tiny_model)
    try:
        with urllib.request.urlopen(f"{server.url}/model/gpt2_onnx.json") as response:
            assert json.loads(response.read())["format_version"] == 2
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        with urllib.request.urlopen(f"{server.url}/web/src/browser.js") as response:
            assert response.headers["Content-Type"] == "text/javascript"
        for path in ("/model/../secret.txt", "/model/", "/web/", "/web/src/../../pyproject.toml", "/model/x.onnx"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"{server.url}{path}")
            assert e.value.code == 404, path
    finally:
        server.close()


def test_a_mount_serves_no_symlink_out_of_its_root_nor_encoded_dot_segments(tiny_model, tmp_path):
    """A link under an open mount that leads out of its root is not served (the files under the root only);
    dot segments and slashes written as %2e / %2f are decoded before the path is judged."""
    root, outside = tmp_path / "src", tmp_path / "outside.txt"
    root.mkdir()
    outside.write_text("no")
    (root / "page.js").write_text("ok")
    (root / "link.js").symlink_to(outside)
    (root / "inner.js").symlink_to(root / "page.js")
    mount = web_app.Mount("/web/src/", root)
    assert mount.path("/web/src/page.js") == root / "page.js"
    assert mount.path("/web/src/inner.js") is not None  # a link that stays inside is the file it names
    assert mount.path("/web/src/link.js") is None
    server = PageServer(tiny_model)
    try:
        for path in (
            "/model/%2e%2e/secret.txt",
            "/web/src%2f..%2f..%2fpyproject.toml",
            "/web/src/%2e%2e/%2e%2e/setup.py",
        ):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"{server.url}{path}")
            assert e.value.code == 404, path
    finally:
        server.close()


def test_web_without_its_javascript_dependencies_says_how_to_get_them(tiny_model, tmp_path, monkeypatch, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "browser.js").write_text("")
    monkeypatch.setattr(web_app, "WEB_DIR", tmp_path)
    assert cli.main(["web", str(tiny_model), "--port", "8001"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.strip().endswith("cd web && npm ci") and "node_modules" in err


@pytest.mark.slow  # every runtime, two browsers per precision
def test_bench_web_smoke(tiny_checkpoint, chromium, tmp_path, monkeypatch):
    """`bench --only web --smoke`: a row per runtime, precision and thread count, transformers.js included."""
    from gpt2_onnx.benchmarks.run import run_web_report
    from gpt2_onnx.benchmarks.web import THREADS

    monkeypatch.setenv("CHROMIUM", chromium)
    doc = run_web_report(tiny_checkpoint, tmp_path, smoke=True)
    assert doc["transformers_js_error"] is None
    rows = {(r["engine"], r["where"], r["precision"], r["threads"]): r for r in doc["rows"]}
    expected = {("gpt2-onnx", w, p, t) for w in ("Python", "Node.js", "Chromium") for p in NAMES for t in THREADS}
    assert set(rows) == expected | {("transformers.js", "Chromium", "fp32", t) for t in THREADS}
    assert all(r["decode_tokens_per_s"] > 0 and r["time_to_first_token_ms"] > 0 for r in rows.values())
    assert all(r["same_ids_as_python"] for k, r in rows.items() if k[1] == "Node.js" or k[2] == "fp32")
    table = (tmp_path / "web.md").read_text()
    assert table.count("| gpt2-onnx | Chromium |") == len(NAMES) * len(THREADS) and "| transformers.js |" in table
    assert (tmp_path / "web.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # where a WebAssembly step's time goes: every weight matmul of each precision's graph counted
    n_layer, profiles = TINY.n_layer, doc["wasm_profiles"]
    assert profiles["fp32"]["ops"]["MatMul"]["nodes"] == 4 * n_layer + 1  # and the LM head
    assert profiles["int8"]["ops"]["MatMulIntegerToFloat"]["nodes"] == 4 * n_layer + 1
    assert profiles["int4"]["ops"]["MatMulNBits"]["nodes"] == 4 * n_layer
    assert "## Where a WebAssembly decode step's time goes" in table and "| MatMulNBits |" in table


@pytest.mark.parametrize("threads", ["0", "-2", str(os.cpu_count() + 1)])
def test_web_threads_out_of_bounds_are_one_line(tiny_model, threads, capsys):
    """`--threads 0` was dropped without a word and a negative count reached the page: refused at once (before
    the port is taken: a taken one here, so that nothing serves if the count is let through)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert cli.main(["web", str(tiny_model), "--threads", threads, "--port", port]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"threads must be an int in [1, {os.cpu_count()}]" in err, err


def test_web_int8_on_webgpu_is_one_line_naming_the_precisions_that_run(tiny_model, capsys):
    """`gpt2-onnx web --device webgpu` with INT8 (no WebGPU kernel for its matmuls) is refused before serving."""
    assert cli.main(["web", str(tiny_model), "--device", "webgpu", "--precision", "int8", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision int8 does not run on WebGPU" in err, err
    assert "use --precision fp32 or int4 with --device webgpu, or --device wasm" in err, err


def test_web_on_a_port_in_use_is_one_line(tiny_model, node_modules, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["web", str(tiny_model), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot serve on 127.0.0.1:{port}" in err and "another --port" in err
