"""`export_model`: checkpoint → model directory (see `gpt2_onnx.manifest`).

Claim OUT_DIR (see `destination`: checks, lock, signals), load and validate the
checkpoint, convert the tokenizer, build each graph variant, write everything into a
partial directory beside OUT_DIR, check parity against transformers + torch when they
are installed (the `check` extra; the export itself needs neither), and only then move
it into place: a failed or interrupted export leaves nothing behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx

from gpt2_onnx import models, precisions
from gpt2_onnx.checksums import remember_verified, sha256_file
from gpt2_onnx.errors import SourceError
from gpt2_onnx.graph_io import IO_KV_BUFFER, IO_PAST_KEY_VALUES
from gpt2_onnx.manifest import CONFIG_NAME, MANIFEST_NAME, TOKENIZER_NAME, Graph, Manifest, Variant

from . import destination
from .checkpoint import Checkpoint, load_checkpoint
from .graph import Fp32Linear, Linear, build_model
from .quantize import Int8Linear, Int8Settings
from .quantize_blockwise import Int4Linear
from .tokenizer import TokenizerExport, export_tokenizer

# the matmul strategy named by each row of the precision table (`gpt2_onnx.precisions`)
# each precision's matmul strategy (`Precision.strategy`): (its precision row, the INT8 settings) → the Linear
# that writes its graph
STRATEGIES: Mapping[str, Callable[[precisions.Precision, Int8Settings], Linear]] = {
    "fp32": lambda row, int8: Fp32Linear(),
    "int8_per_token": lambda row, int8: Int8Linear(int8),
    "int4_blockwise": lambda row, int8: Int4Linear(row.blocks, int8),
}
# external data layout: onnxruntime maps a tensor from the file when its offset is a
# multiple of the allocation granularity (4 KiB on Linux, 64 KiB on Windows)
EXTERNAL_MIN_BYTES = 1024
ALIGN_MIN_BYTES = 1 << 16
ALIGNMENT = 1 << 16
TOOLS = ("gpt2-onnx", "onnx", "onnxruntime", "torch", "transformers", "tokenizers")
CHECK_PACKAGES = ("torch", "transformers")  # the parity check's reference
DEFAULT_INT8 = Int8Settings()  # INT8 quantization as exported unless a caller (the kernels benchmark) asks otherwise


def export_model(
    source: str,
    out_dir: str | Path,
    quantize: tuple[str, ...] = (),
    force: bool = False,
    check: bool = True,
    int8: Int8Settings = DEFAULT_INT8,
    progress: Callable[[str], None] = lambda message: None,
    wait: bool = False,
) -> Path:
    """Export `source` (local checkpoint dir or hub id) to `out_dir`; return its path.

    `quantize`: extra variants beside FP32, e.g. ("int8", "int4"). `force`: replace an
    earlier gpt2-onnx export at `out_dir` that holds only the files its manifest lists (no
    other directory is ever replaced: see `destination`). `check`:
    compare every variant with torch before the directory is published (see `check_model`);
    the FP32 graph must agree within `FP32_TOLERANCE`; without torch or transformers installed
    the check is skipped, with a note through `progress` saying how to run it later.
    `progress` receives one line per step.
    `wait`: when another export to `out_dir` is running, wait for it and return the model
    directory it finished instead of failing at once (the hub cache's first uses).
    """
    out = Path(out_dir).expanduser().resolve()
    _check_options(quantize)
    with destination.claim(out, source, ("fp32", *quantize), force, wait, progress) as finished:
        if finished:
            return out
        progress(f"loading {source}")
        checkpoint = load_checkpoint(source)
        tokenizer = export_tokenizer(checkpoint.path, checkpoint.config, checkpoint.weights["wte.weight"].shape[0])
        with destination.partial(out) as tmp:
            manifest = _write_directory(tmp, checkpoint, tokenizer, quantize, int8, progress)
            if check:
                _check_parity(tmp, checkpoint, out, progress)
            destination.publish(tmp, out)
        _remember_checksums(out, manifest)
    return out


def _remember_checksums(out: Path, manifest: Manifest) -> None:
    """The files were hashed as they were written; a rename of their directory changes
    none of their stat signatures, so the first load need not hash them again."""
    remember_verified({out / name: sha256 for name, sha256 in manifest.checksummed_files()})


def _write_directory(
    tmp: Path,
    checkpoint: Checkpoint,
    tokenizer: TokenizerExport,
    quantize: tuple[str, ...],
    int8: Int8Settings,
    progress: Callable[[str], None],
) -> Manifest:
    """Every file of the model directory contract, the manifest last (returned)."""
    variants, weights = {}, _weights_for_graph(checkpoint)
    for name in ("fp32", *quantize):
        progress(f"writing {precisions.BY_NAME[name].graph_file}")
        variants[name] = _write_variant(tmp, checkpoint, weights, precisions.BY_NAME[name], int8)
    (tmp / TOKENIZER_NAME).write_text(tokenizer.json, encoding="utf-8")
    shutil.copyfile(checkpoint.path / CONFIG_NAME, tmp / CONFIG_NAME)
    family = models.family_of(checkpoint.source_id, tokenizer.kind)
    manifest = Manifest(
        architecture=checkpoint.spec.architecture,
        conventions=tokenizer.conventions,
        variants=variants,
        tokenizer_sha256=sha256_file(tmp / TOKENIZER_NAME),
        generation_defaults=models.generation_defaults(family),
        source={"id": checkpoint.source_id, "revision": checkpoint.revision, "family": family},
        tools=package_versions(TOOLS),
    )
    (tmp / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _check_parity(model_dir: Path, checkpoint: Checkpoint, out: Path, progress: Callable[[str], None]) -> None:
    # looked up as installed distributions, not imported: a light install never touches torch
    missing = [name for name in CHECK_PACKAGES if name not in package_versions(CHECK_PACKAGES)]
    if missing:
        progress(
            f"parity check against transformers + torch skipped ({' and '.join(missing)} not installed); to run it: "
            f"pip install 'gpt2-onnx[check]', then gpt2-onnx check {out} --against {checkpoint.source_id}"
        )
        return
    from .parity import check_model, require_fp32_parity

    progress(f"checking against transformers + torch ({checkpoint.path})")
    reports = check_model(model_dir, checkpoint.path)
    for report in reports:
        progress(report.line())
    require_fp32_parity(reports)


def _check_options(quantize: tuple[str, ...]) -> None:
    unknown = [q for q in quantize if q not in precisions.QUANTIZED]
    if unknown:
        raise SourceError(f"unknown quantization {unknown[0]!r}; choose from: {', '.join(precisions.QUANTIZED)}")


def _weights_for_graph(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's tensors; a tied LM head is `wte.weight` itself, stored once."""
    weights = dict(checkpoint.weights)
    if checkpoint.spec.tied_lm_head:
        weights.pop("lm_head.weight", None)
    return weights


def _write_variant(
    tmp: Path,
    checkpoint: Checkpoint,
    weights: dict[str, np.ndarray],
    precision: precisions.Precision,
    int8: Int8Settings,
) -> Variant:
    """The graph the runtime runs and, for FP32, the ecosystem's graph, on one weights file."""
    spec, linear = checkpoint.spec, linear_for(precision.name, int8)
    graphs = {
        tmp / precision.graph_file: build_model(dict(weights), spec, linear, IO_KV_BUFFER)
    }  # a copy: quantizers add to it
    if precision.ecosystem_graph:
        graphs[tmp / precisions.ECOSYSTEM_GRAPH] = build_model(dict(weights), spec, linear, IO_PAST_KEY_VALUES)
    data = save_with_external_data(graphs, tmp / precision.data_file)
    io = dict(zip(graphs, (IO_KV_BUFFER, IO_PAST_KEY_VALUES)))
    return Variant(
        graphs=tuple(Graph(path.name, sha256_file(path), io[path]) for path in graphs),
        data_file=data.name,
        data_sha256=sha256_file(data),
        quantization=linear.quantization(spec.architecture, spec.tied_lm_head),
    )


def linear_for(precision: str, int8: Int8Settings = DEFAULT_INT8) -> Linear:
    """The matmul strategy that writes a precision's graph."""
    row = precisions.BY_NAME[precision]
    return STRATEGIES[row.strategy](row, int8)


def save_with_external_data(graphs: Mapping[Path, onnx.ModelProto], data: Path) -> Path:
    """Write each graph to its path and their tensors, once each, to `data` (returned), large
    ones at 64 KiB-aligned offsets: onnxruntime then maps them from the file instead of
    copying them out of a protobuf, so a weight it has repacked for its kernels does not stay
    in memory twice, and sessions start faster. Graphs of one variant share their weights."""
    where: dict[str, tuple[int, int]] = {}  # tensor name → (offset, length) in `data`
    with open(data, "wb") as f:
        for model in graphs.values():
            for tensor in model.graph.initializer:
                if len(tensor.raw_data) < EXTERNAL_MIN_BYTES and tensor.name not in where:
                    continue
                if tensor.name not in where:
                    if len(tensor.raw_data) >= ALIGN_MIN_BYTES:
                        f.write(b"\0" * (-f.tell() % ALIGNMENT))
                    where[tensor.name] = (f.tell(), len(tensor.raw_data))
                    f.write(tensor.raw_data)
                offset, length = where[tensor.name]
                assert length == len(tensor.raw_data), f"graphs of one variant disagree on {tensor.name}"
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                    tensor.external_data.add(key=key, value=value)
    for path, model in graphs.items():
        onnx.save_model(model, path)
    return data


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions (missing ones left out)."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found
