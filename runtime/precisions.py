"""The precisions a model directory can hold: one row each, read by the exporter (which
writes them), the runtime and CLI (which load them) and the benchmarks (which measure them).

Adding a precision is one row here plus its matmul strategy in `gpt2_onnx.export`
(`STRATEGIES`, keyed by `Precision.strategy`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Blockwise:
    """Weights in blocks along the input dimension, each block with its own scale and zero
    point (onnxruntime's MatMulNBits). `head_bits` 8 keeps the tied embedding / LM head at 8
    bits per row (the int8 precision's kernel), 4 blocks it like the rest."""

    block_size: int = 32  # inputs sharing a scale and zero point (MatMulNBits' block_size)
    accuracy_level: int = 4  # 4: activations int8 per block, integer kernels; 0: FP32 activations
    head_bits: int = 8

    def __post_init__(self):
        if self.block_size < 16 or self.block_size & (self.block_size - 1) or self.head_bits not in (4, 8):
            raise ValueError(f"Blockwise: a power-of-two block size ≥ 16 and head_bits 4 or 8, got {self}")
        if self.accuracy_level not in (0, 4):
            raise ValueError(f"Blockwise: accuracy_level 0 (FP32) or 4 (int8 activations), got {self.accuracy_level}")


@dataclass(frozen=True)
class Precision:
    name: str
    strategy: str  # the exporter's matmul strategy that writes it
    description: str
    size_factor: float  # bytes on disk per byte of FP32 weights (for the exporter's free-space check)
    ecosystem_graph: bool = False  # also write model.onnx: the same weights in the ecosystem's I/O convention
    # rows a one-token call binds at least, unless the probe at load finds a lone row exact on
    # this CPU (`gpt2_onnx.session.lone_row_is_exact`; the decision is `Decoder.min_rows`, shown
    # in `serve`'s start line). onnxruntime's MatMulNBits takes another kernel for a one-row
    # input, whose activation quantization gives other logits on some CPUs (an Intel Xeon with
    # AMX: by up to 0.17 at full size): there a scratch row runs beside a lone one, so a row's
    # result never depends on its batch, as on an AMD EPYC with AVX2 only; on an AMD EPYC with
    # AVX-512 VNNI a lone row runs alone (benchmarks/results/kernels-*.md: the probe per CPU family)
    min_call_rows: int = 1
    # a row's logits are the same whatever shape of call computes them (one token or several,
    # one row or many): what speculative decoding and the prefix cache need to be exact.
    # MatMulNBits' int8 activation blocks differ between its kernels (by up to 0.15 at full size)
    shape_exact: bool = True
    blocks: Blockwise | None = None  # how a blockwise strategy stores the weights
    # onnxruntime-web's WebGPU provider has a kernel for every op of the graph (the JavaScript package's
    # `device: "webgpu"`): it has none for MatMulIntegerToFloat, and its MatMulNBits keeps activations in FP32
    # (not int8 blocks), so INT4 there is not the CPU's INT4 to the bit
    webgpu: bool = True
    # when to pick it, from the committed figures (benchmarks/results/speed.md and quality.md): the CLI's
    # --precision help and the README's quickstart say it (`guide`)
    pick_for: str = ""

    @property
    def graph_file(self) -> str:
        """The graph the runtime runs (`kv_buffer` convention)."""
        return f"model.{self.name}.onnx"

    @property
    def data_file(self) -> str:
        """The weights, ONNX external data shared by every graph of the variant."""
        return self.graph_file + ".data"


ECOSYSTEM_GRAPH = "model.onnx"  # where optimum, onnxruntime-genai and transformers.js look
WEB_DEVICES = ("wasm", "webgpu")  # where the JavaScript package runs a graph in a browser (`Precision.webgpu`)

# chosen on the quality model: blocks of 32 carry 0.6× the error of 128 (top-1 98.0 vs 97.4 %)
INT4_BLOCKS = Blockwise()

PRECISIONS = (
    Precision(
        "fp32",
        "fp32",
        "the checkpoint's FP32 weights",
        1.0,
        ecosystem_graph=True,
        pick_for="fidelity: the checkpoint's own numbers, the ones transformers computes (240 MB, 151 tok/s)",
    ),
    Precision(
        "int8",
        "int8_per_token",
        "8-bit weights per output column, activations quantized per token",
        0.27,
        webgpu=False,
        pick_for="latency and throughput: the fastest prompts and batches (TTFT at 256 tokens 36.6 ms, batch 32 "
        "2,007 tok/s, a lone row 401 tok/s), 98.9 % top-1 agreement with FP32, prefix cache and speculation (64 MB)",
    ),
    Precision(
        "int4",
        "int4_blockwise",
        f"4-bit weights in blocks of {INT4_BLOCKS.block_size} with zero points, embedding / LM head "
        f"{INT4_BLOCKS.head_bits}-bit, activations int8 per block",
        0.21,
        min_call_rows=2,
        shape_exact=False,
        blocks=INT4_BLOCKS,
        pick_for="size: the smallest file (48.7 MB) and a lone row as fast as INT8 (406 tok/s), prompts 2.2× slower "
        "(TTFT at 256 tokens 81.8 ms), 98.0 % top-1 agreement with FP32, no prefix cache or speculation",
    ),
)
BY_NAME = {p.name: p for p in PRECISIONS}
NAMES = tuple(BY_NAME)
QUANTIZED = tuple(p.name for p in PRECISIONS if p.name != "fp32")
DEFAULT_PRECISION = "int8"


def check_web_device(device: str, precision: str, names: tuple[str, str] = ("precision", "device")) -> None:
    """Refuses a browser device that does not run the precision's graph whole (`Precision.webgpu`), naming the
    fix in the caller's `names` for the two settings. The JavaScript package's `checkDevice` says the same."""
    if device == "webgpu" and not BY_NAME[precision].webgpu:
        runs = " or ".join(p.name for p in PRECISIONS if p.webgpu)
        precision_name, device_name = names
        raise ValueError(
            f"{precision_name} {precision} does not run on WebGPU (onnxruntime-web's WebGPU provider has no kernel "
            f"for its integer matmuls): use {precision_name} {runs} with {device_name} webgpu, or {device_name} wasm"
        )


def guide() -> str:
    """Which variant to pick, one line each (the default marked), from the committed figures."""
    return "\n".join(
        f"- `{p.name}`{' (default)' if p.name == DEFAULT_PRECISION else ''}: {p.pick_for}" for p in PRECISIONS
    )
