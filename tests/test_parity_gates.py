"""The parity check's verdicts: quantized figures are judged against their gates, and a
quantizer that is off by a factor of two is caught."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2_onnx.export import export_model
from gpt2_onnx.export.parity import GATES, check_model


@pytest.fixture(scope="module")
def reports(tiny_model, tiny_checkpoint):
    return {r.precision: r for r in check_model(tiny_model, tiny_checkpoint)}


def test_int8_figures_are_within_their_gate(reports):
    int8, gate = reports["int8"], GATES["int8"]
    assert int8.prefill_relative_error <= gate.max_relative_error and int8.prefill_top1 >= gate.min_top1
    assert int8.line().endswith("within INT8 gate")
    assert reports["fp32"].verdict() == "ok"


def test_a_wrong_int8_scale_is_outside_the_gate(tiny_checkpoint, tmp_path, monkeypatch):
    import gpt2_onnx.export.quantize as quantize

    real = quantize.quantize_columns

    def doubled_scale(w, settings):
        q, scale = real(w, settings)
        return q, scale * 2

    monkeypatch.setattr(quantize, "quantize_columns", doubled_scale)
    broken = export_model(str(tiny_checkpoint), tmp_path / "broken", quantize=("int8",), check=False)
    (report,) = check_model(broken, tiny_checkpoint, variants=("int8",))
    assert report.prefill_relative_error > GATES["int8"].max_relative_error
    assert report.verdict().startswith("outside INT8 gate (relative error")


def test_int4_figures_are_within_their_gate_and_lost_zero_points_are_not(tiny_int4, tiny_checkpoint, tmp_path):
    import gpt2_onnx.export.quantize_blockwise as blockwise

    (int4,) = check_model(tiny_int4, tiny_checkpoint, variants=("int4",))
    assert int4.verdict() == "within INT4 gate", int4.line()

    real = blockwise.search_blocks

    def zero_points_lost(blocks):  # levels read as if 0 meant 0, as without the zero-point input
        q, scale, zero = real(blocks)
        return q, scale, np.zeros_like(zero)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(blockwise, "search_blocks", zero_points_lost)
        broken = export_model(str(tiny_checkpoint), tmp_path / "broken", quantize=("int4",), check=False)
    (report,) = check_model(broken, tiny_checkpoint, variants=("int4",))
    assert report.verdict().startswith("outside INT4 gate"), report.line()
