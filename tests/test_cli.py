"""`gpt2-onnx generate` and `check`, and first use of a hub id (exported into the cache)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from gpt2_onnx import Generator
from gpt2_onnx.apps.cli import main
from gpt2_onnx.options import MAX_ROWS


def cli(*args, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt2_onnx.apps.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_generate_streams_the_same_text_as_the_api(tiny_model):
    proc = cli(
        "generate",
        "这是很久之前的事情了",
        "--model",
        str(tiny_model),
        "--precision",
        "fp32",
        "--max-new-tokens",
        "20",
        "--no-do-sample",
    )
    assert proc.returncode == 0, proc.stderr
    expected = Generator.load(tiny_model, precision="fp32").generate(
        "这是很久之前的事情了", max_new_tokens=20, do_sample=False
    )
    assert proc.stdout == expected.text + "\n"


def test_generate_json_lines(tiny_model):
    proc = cli(
        "generate",
        "今天",
        "--model",
        str(tiny_model),
        "--json",
        "--max-new-tokens",
        "8",
        "--do-sample",
        "--seed",
        "3",
        "--num-return-sequences",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["prompt"] == "今天" and len(r["token_ids"]) == 8 and r["finish_reason"] == "length"
        assert r["timings"]["new_tokens"] == 16 and r["timings"]["decode_tokens_per_s"] > 0
        assert all(round(v, 4) == v for v in r["timings"].values())  # seconds to 0.1 ms, not 17 digits


def test_prompts_from_standard_input(tiny_model):
    """One prompt per line; a blank line (or only whitespace) is no prompt, as at the interactive prompt."""
    proc = cli(
        "generate",
        "--model",
        str(tiny_model),
        "--max-new-tokens",
        "5",
        "--no-do-sample",
        stdin="这是\n\n \t\n今天天气\n",
    )
    assert proc.returncode == 0, proc.stderr
    gen = Generator.load(tiny_model)
    expected = [gen.generate(p, max_new_tokens=5, do_sample=False).text for p in ("这是", "今天天气")]
    assert proc.stdout.splitlines() == expected


def test_bad_option_is_one_line(tiny_model, capsys):
    code = main(["generate", "x", "--model", str(tiny_model), "--top-p", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "top_p must be in (0, 1]" in err
    proc = cli("generate", "x", "--model", str(tiny_model), "--top-k", "many")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--top-k" in proc.stderr


def test_rows_and_threads_are_bounded_in_one_line(tiny_model, capsys):
    """`--num-beams 100000` grew to 23 GB and `--threads 100000` hung: both are refused at once, naming the bound."""
    for flags, bound in (
        (["--num-beams", "1000"], "num_beams must be an int in [1, 64]"),
        (["--num-return-sequences", "65", "--do-sample"], "num_return_sequences must be an int in [1, 64]"),
        (["--threads", str(os.cpu_count() + 1)], f"threads must be an int in [1, {os.cpu_count()}]"),
    ):
        code = main(["generate", "x", "--model", str(tiny_model), "--max-new-tokens", "2", "--no-do-sample", *flags])
        captured = capsys.readouterr()
        assert code == 1 and captured.err.count("\n") == 1 and bound in captured.err and captured.out == "", captured


def test_bench_threads_are_bounded_in_one_line_before_anything_runs(tmp_path, capsys):
    """`bench --threads 100000` started every engine's pool of 100,000 threads: refused at once."""
    code = main(["bench", "--smoke", "--only", "kernels", "--out", str(tmp_path), "--threads", str(os.cpu_count() + 1)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and f"threads must be an int in [1, {os.cpu_count()}]" in err, err
    assert not any(tmp_path.iterdir())


def test_batch_engine_rows_are_bounded_by_the_runtime(tiny_model, tmp_path, capsys):
    """`batch --max-running 100000` failed allocating its engine (a traceback): the runtime's bound, in one line."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    argv = ["batch", str(source), str(tmp_path / "out.jsonl"), "--model", str(tiny_model), "--max-running", "100000"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and f"--max-running must be ≤ {MAX_ROWS}" in err, err
    assert not (tmp_path / "out.jsonl").exists()


def test_output_that_cannot_be_written_is_one_line(tiny_model, tiny_checkpoint, tmp_path):
    """`generate > /dev/full` (streaming and JSON) and `export > /dev/full`: one line and exit 1."""
    generate = ["generate", "这是", "--model", str(tiny_model), "--max-new-tokens", "4"]
    export = ["export", str(tiny_checkpoint), str(tmp_path / "model"), "--no-check"]
    for argv in (generate, [*generate, "--json"], export):
        with open("/dev/full", "w") as full:
            proc = subprocess.run(
                [sys.executable, "-m", "gpt2_onnx.apps.cli", *argv],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=600,
            )
        last = proc.stderr.splitlines()[-1]  # export reports its progress on stderr first
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert argv[0] == "export" or proc.stderr.count("\n") == 1, proc.stderr
        assert last.startswith("gpt2-onnx: error: cannot write the output") and "No space left" in last


def test_context_errors_name_the_flag_and_slide_truncates_to_what_starts(tiny_model, capsys):
    """The remedy for an over-long prompt is spelled as this command line takes it; with slide,
    --truncate left keeps all the prompt that leaves one position, whatever --max-new-tokens is."""
    long_prompt = "这是很久之前的事情了" * 20  # 201 tokens with [CLS]; the tiny model has 128 positions
    code = main(["generate", long_prompt, "--model", str(tiny_model), "--max-new-tokens", "20"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "or pass --truncate left" in err and "truncate='left'" not in err, err
    slide = ["--truncate", "left", "--context-overflow", "slide", "--max-new-tokens", "200", "--no-do-sample", "--json"]
    assert main(["generate", long_prompt, "--model", str(tiny_model), *slide]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt_tokens"] == 127 and (len(record["token_ids"]) == 200 or record["finish_reason"] == "stop")


def test_readme_makes_the_checkpoint_its_example_exports(tmp_path):
    """The README's example exports a random-weight full-size checkpoint: its first command makes it there."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    build = re.search(r"^\$ (python -c .*default_checkpoint.*)$", readme, re.M).group(1)
    source = re.search(r"^\$ gpt2-onnx export ~/.cache/gpt2-onnx/(\S+) models/distil-random ", readme, re.M).group(1)
    proc = subprocess.run(
        [sys.executable, *shlex.split(build)[1:]],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "GPT2_ONNX_CACHE": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == tmp_path / source and (tmp_path / source / "config.json").is_file()


def test_check_command(tiny_model, tiny_checkpoint):
    proc = cli("check", str(tiny_model), "--against", str(tiny_checkpoint))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["fp32", "int8"]
    assert "greedy 64/64 identical" in lines[0] and lines[0].endswith("ok")
    assert lines[1].endswith("within INT8 gate")


def fake_hub_cache(home, repo_id, checkpoint) -> None:
    """A Hugging Face cache holding `repo_id` as huggingface_hub itself lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_is_exported_on_first_use_then_loaded_from_cache(tiny_checkpoint, tmp_path):
    fake_hub_cache(tmp_path / "hf", "someone/tiny-chinese-gpt2", tiny_checkpoint)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "GPT2_ONNX_CACHE": str(tmp_path / "cache")}
    first = cli(
        "generate", "这是", "--model", "someone/tiny-chinese-gpt2", "--max-new-tokens", "6", "--no-do-sample", env=env
    )
    assert first.returncode == 0, first.stderr
    assert "exporting someone/tiny-chinese-gpt2" in first.stderr
    cached = tmp_path / "cache" / "someone--tiny-chinese-gpt2"
    manifest = json.loads((cached / "gpt2_onnx.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "int8", "int4"}
    assert "writing model.int8.onnx" in first.stderr and "checking against transformers" in first.stderr
    assert manifest["source"]["revision"] == "0123456789abcdef0123456789abcdef01234567"
    second = cli(
        "generate", "这是", "--model", "someone/tiny-chinese-gpt2", "--max-new-tokens", "6", "--no-do-sample", env=env
    )
    assert second.returncode == 0 and second.stdout == first.stdout and "exporting" not in second.stderr
    code = (
        "import sys; from gpt2_onnx import Generator; Generator.load('someone/tiny-chinese-gpt2'); "
        "print('torch' in sys.modules)"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert probe.stdout.strip() == "False", probe.stderr


def raw_cli(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The CLI with bytes in and out, for input that is not valid UTF-8."""
    return subprocess.run(
        [sys.executable, "-m", "gpt2_onnx.apps.cli", *args], input=stdin, capture_output=True, timeout=600
    )


def test_invalid_utf8_prompt_is_one_line(tiny_model):
    for args, stdin in (([b"\xff\xfe"], None), ([], b"\xe4\xbd\xa0\xff\n")):
        proc = raw_cli("generate", *args, "--model", str(tiny_model), "--max-new-tokens", "3", stdin=stdin)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.count("\n") == 1, err
        assert err.startswith("gpt2-onnx: error: the prompt is not valid UTF-8") and "0xff" in err


def test_broken_pipe_exits_quietly(tiny_model):
    """`gpt2-onnx generate ... | head -1`: the reader leaves, the CLI ends without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2_onnx.apps.cli", "generate", "--model", str(tiny_model), "--max-new-tokens", "4"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdin.write("这是\n".encode() * 3000)
    proc.stdin.close()
    assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 141 and err == ""


def test_heavy_imports_happen_inside_main(tiny_model, monkeypatch, capsys):
    """Ctrl-C while numpy / onnxruntime load is handled by main: importing the CLI loads neither."""
    code = (
        "import sys, gpt2_onnx.apps.cli as cli; cli.build_parser()  # every sub-command's flags, as --help\n"
        "print(sorted({'numpy', 'onnxruntime', 'fastapi', 'uvicorn', 'ray'} & set(sys.modules)))"
    )
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from gpt2_onnx.generator import Generator as Loaded

    monkeypatch.setattr(Loaded, "load", interrupted)
    assert main(["generate", "x", "--model", str(tiny_model)]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_usage_errors_name_the_parser(capsys):
    for argv, hint in (
        (["bogus"], "see `gpt2-onnx --help`"),
        (["generate", "--top-k", "x"], "see `gpt2-onnx generate --help`"),
    ):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and hint in err, err


def test_version(capsys):
    from importlib.metadata import version

    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out == f"gpt2-onnx {version('gpt2-onnx')}\n" == "gpt2-onnx 0.1.0\n"


def test_help_shows_defaults(capsys):
    def help_text(*argv) -> str:
        try:
            main([*argv, "--help"])
        except SystemExit:
            pass
        return " ".join(capsys.readouterr().out.split())  # unwrapped

    text = help_text("generate")
    assert "--top-k TOP_K sample among the k best tokens (0: all) (default: the model's)" in text
    assert "--precision {fp32,int8,int4} model variant: fp32: fidelity" in text
    assert "int8 (default): latency and throughput" in text
    assert "results directory (default: benchmarks/results)" in help_text("bench")


def test_streaming_follows_the_manifest_defaults(tiny_model, tmp_path):
    """A model whose manifest defaults to beams prints the beam result instead of failing in stream()."""
    model = shutil.copytree(tiny_model, tmp_path / "model")
    manifest = json.loads((model / "gpt2_onnx.json").read_text())
    manifest["generation_defaults"] = {"num_beams": 2, "do_sample": False}
    (model / "gpt2_onnx.json").write_text(json.dumps(manifest))
    proc = cli("generate", "这是", "--model", str(model), "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == Generator.load(model).generate("这是", max_new_tokens=6).text + "\n"


def apps_imports(root: Path) -> dict[str, set[str]]:
    """Module (dotted, relative to apps/) → the apps modules it imports, read from its source with `ast`;
    fails on `importlib.import_module` of one of our own modules."""
    import ast

    modules = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix("__init__").rstrip("."): p
        for p in root.rglob("*.py")
    }
    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [part for part in package if part]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    prefix = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                elif (node.module or "").startswith("gpt2_onnx.apps"):
                    prefix = node.module.removeprefix("gpt2_onnx.apps").lstrip(".")
                else:
                    continue
                for alias in node.names:  # `from . import x`: the module x, if it is one
                    full = f"{prefix}.{alias.name}".lstrip(".")
                    targets.add(full if full in modules else prefix)
            elif isinstance(node, ast.Import):
                targets |= {
                    a.name.removeprefix("gpt2_onnx.apps.") for a in node.names if a.name.startswith("gpt2_onnx.apps.")
                }
            elif isinstance(node, ast.Call) and "import_module" in (
                getattr(node.func, "attr", None),
                getattr(node.func, "id", None),
            ):
                argument = node.args[0] if node.args else None
                assert not (isinstance(argument, ast.Constant) and "gpt2_onnx" in str(argument.value)), (
                    f"{path}: importlib for our own module {argument.value}"
                )
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_apps_import_no_cli_and_form_no_cycle():
    """`cli.py` is the top of apps/ (the table of sub-commands): nothing in apps imports it, and the
    imports between apps modules form no cycle (they once went cli → batch_cli → cli through importlib)."""
    import gpt2_onnx.apps as apps

    graph = apps_imports(Path(apps.__file__).parent)
    assert not [name for name, targets in graph.items() if "cli" in targets]
    assert {"commands.batch", "commands.serve", "commands.generate"} <= graph["cli"]

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' → '.join(path + (name,))}"
        for target in graph[name]:
            visit(target, path + (name,))

    for name in graph:
        visit(name, ())


def test_serve_max_running_is_bounded_by_the_runtime_as_batch_is(tiny_model, monkeypatch, capsys):
    """`serve --max-running 100000` started (and failed allocating its engine): refused in one line,
    by the check batch uses."""
    import gpt2_onnx.apps.serve as serving

    monkeypatch.setattr(serving, "serve", lambda args: 0)  # the server itself is not what is tested
    for command in (["serve", "--model", str(tiny_model)], ["batch", "in.jsonl", "out.jsonl"]):
        for value, bound in (("100000", f"--max-running must be ≤ {MAX_ROWS}"), ("0", "--max-running must be ≥ 1")):
            assert main([*command, "--max-running", value]) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and bound in err, err
