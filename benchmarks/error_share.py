"""Which matrix a quantized variant's error comes from.

Each quantized matrix is quantized alone, every other weight left in FP32, and the
graph's logits compared with FP32's on the same held-out windows: the mean KL divergence
KL(FP32 ‖ variant) per position is that matrix's error, and its share is that error over
the sum of all of them (errors this small add up nearly linearly). The tied embedding /
LM head is one matrix: both its uses are quantized together.

    for w in quantized weights:  logits_w = graph(weights, only w quantized)   [windows, seq, vocab]
        KL_w = mean over positions of Σ_v p_fp32 · (log p_fp32 − log p_w)
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from gpt2_onnx.export.api import linear_for
from gpt2_onnx.export.checkpoint import Checkpoint, load_checkpoint
from gpt2_onnx.export.graph import Fp32Linear, GraphWriter, Linear, build_model
from gpt2_onnx.export.quantize import quantized_weight_names
from gpt2_onnx.export.quantize_blockwise import Int4Linear
from gpt2_onnx.graph_io import IO_KV_BUFFER
from gpt2_onnx.logits import log_softmax
from gpt2_onnx.manifest import Quantization
from gpt2_onnx.precisions import BY_NAME
from gpt2_onnx.session import Decoder, create_session


class OnlyOne:
    """`linear` for the one weight `name` (both uses of a tied embedding / LM head), FP32 for the rest."""

    def __init__(self, linear: Linear, name: str):
        self.linear, self.name, self.fp32 = linear, name, Fp32Linear()

    def _for(self, weight: str) -> Linear:
        return self.linear if weight == self.name else self.fp32

    def matmul(self, g: GraphWriter, x: str, weight: str, bias: str | None) -> str:
        return self._for(weight).matmul(g, x, weight, bias)

    def lm_head(self, g: GraphWriter, x: str, weight: str) -> str:
        return self._for(weight).lm_head(g, x, weight)

    def embed(self, g: GraphWriter, weight: str, ids: str) -> str:
        return self._for(weight).embed(g, weight, ids)

    def quantization(self, a, tied_lm_head: bool) -> Quantization | None:
        return None


def in_memory_decoder(
    checkpoint: Checkpoint, linear: Linear, threads: int | None = None, profile_prefix: str | None = None
) -> Decoder:
    """The checkpoint's kv_buffer graph as `linear` writes it, run from memory (nothing exported to disk);
    `profile_prefix`: profile its runs (`create_session`)."""
    weights = dict(checkpoint.weights)
    if checkpoint.spec.tied_lm_head:
        weights.pop("lm_head.weight", None)
    model = build_model(weights, checkpoint.spec, linear, IO_KV_BUFFER)
    return Decoder(create_session(model.SerializeToString(), threads, profile_prefix), checkpoint.spec.architecture)


def score_windows(decoder: Decoder, blocks: np.ndarray, batch: int = 8) -> np.ndarray:
    """Logits of every position [windows, seq, vocab] of token windows [windows, seq], `batch` at a time."""
    return np.concatenate([decoder.score(blocks[i : i + batch]) for i in range(0, len(blocks), batch)])


def graph_logits(checkpoint: Checkpoint, linear: Linear, blocks: np.ndarray) -> np.ndarray:
    """Logits of every position [windows, seq, vocab] of the graph `linear` writes."""
    return score_windows(in_memory_decoder(checkpoint, linear), blocks)


def mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax(reference) ‖ softmax(logits)), [windows, seq, vocab] each
    (a window at a time: the temporaries of a whole run would take gigabytes)."""
    total = 0.0
    for ref, got in zip(reference, logits):
        p_log = log_softmax(ref)  # [seq, vocab]
        total += float((np.exp(p_log) * (p_log - log_softmax(got))).sum(-1).sum())
    return total / (reference.shape[0] * reference.shape[1])


def error_shares(
    checkpoint: Checkpoint, linear: Linear, names: tuple[str, ...], blocks: np.ndarray, reference: np.ndarray
) -> dict[str, dict[str, float]]:
    """Per weight name: KL of the graph with only that weight quantized, and its share of the sum."""
    kl = {name: mean_kl(reference, graph_logits(checkpoint, OnlyOne(linear, name), blocks)) for name in names}
    total = sum(kl.values()) or 1.0
    return {name: {"kl": value, "share": value / total} for name, value in kl.items()}


def int4_error_shares(checkpoint_dir: Path, blocks: np.ndarray, reference: np.ndarray) -> dict:
    """The int4 precision's matrices, each alone (`error_shares`), and what its embedding / LM
    head would cost at 4 bits instead of its 8: the case for keeping it at 8."""
    checkpoint = load_checkpoint(str(checkpoint_dir))
    settings = BY_NAME["int4"].blocks
    names = quantized_weight_names(checkpoint.spec.architecture, checkpoint.spec.tied_lm_head)
    head_at_4 = OnlyOne(Int4Linear(replace(settings, head_bits=4)), names[-1])
    return {
        "settings": asdict(settings),
        "matrices": error_shares(checkpoint, linear_for("int4"), names, blocks, reference),
        "head_at_4_bits_kl": mean_kl(reference, graph_logits(checkpoint, head_at_4, blocks)),
    }
