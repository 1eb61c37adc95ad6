"""`export_model`: checkpoint → model directory (see `gpt2_onnx.manifest`).

Load and validate the checkpoint, convert the tokenizer, build each graph variant,
write everything into a temporary directory beside OUT_DIR, check parity against
transformers + torch when they are installed (the `check` extra; the export itself
needs neither), and only then move it into place: a failed export leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx

from gpt2_onnx import models
from gpt2_onnx.checksums import remember_verified, sha256_file
from gpt2_onnx.errors import SourceError
from gpt2_onnx.manifest import (
    CONFIG_NAME, IO_KV_BUFFER, IO_PAST_KEY_VALUES, KNOWN_IO, MANIFEST_NAME, TOKENIZER_NAME,
    Manifest, Variant,
)

from .checkpoint import Checkpoint, load_checkpoint
from .graph import Fp32Linear, Linear, build_model
from .quantize import Int8Linear, Int8Settings
from .quantize_blockwise import Int4Linear
from .tokenizer import TokenizerExport, export_tokenizer

PRECISIONS = ("fp32", "int8", "int4")
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "int4": "model.int4.onnx"}
# model.onnx keeps the ecosystem's convention, so optimum and other tools load the directory;
# the quantized variants are ours alone and take the faster in-place KV buffer.
VARIANT_IO = {"fp32": IO_PAST_KEY_VALUES, "int8": IO_KV_BUFFER, "int4": IO_KV_BUFFER}
# external data layout: onnxruntime maps a tensor from the file when its offset is a
# multiple of the allocation granularity (4 KiB on Linux, 64 KiB on Windows)
EXTERNAL_MIN_BYTES = 1024
ALIGN_MIN_BYTES = 1 << 16
ALIGNMENT = 1 << 16
TOOLS = ("gpt2-onnx", "onnx", "onnxruntime", "torch", "transformers", "tokenizers")
CHECK_PACKAGES = ("torch", "transformers")  # the parity check's reference


def export_model(
    source: str,
    out_dir: str | Path,
    quantize: tuple[str, ...] = (),
    force: bool = False,
    check: bool = True,
    int8: Int8Settings = Int8Settings(),
    progress: Callable[[str], None] = lambda message: None,
    variant_io: Mapping[str, str] = VARIANT_IO,
) -> Path:
    """Export `source` (local checkpoint dir or hub id) to `out_dir`; return its path.

    `quantize`: extra variants beside FP32, e.g. ("int8", "int4"). `check`: compare every
    variant with torch before the directory is published (see `check_model`); the FP32
    graph must agree within `FP32_TOLERANCE`. Without torch or transformers installed the
    check is skipped, with a note through `progress` saying how to run it later. `progress` receives one line per step.
    `variant_io`: the graph I/O convention of each precision (see `gpt2_onnx.manifest`).
    """
    out = Path(out_dir).expanduser().resolve()
    _check_destination(out, force, quantize, variant_io)
    progress(f"loading {source}")
    checkpoint = load_checkpoint(source)
    tokenizer = export_tokenizer(checkpoint.path, checkpoint.config, checkpoint.weights["wte.weight"].shape[0])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = _write_directory(tmp, checkpoint, tokenizer, quantize, int8, variant_io, progress)
        if check:
            _check_parity(tmp, checkpoint, out, progress)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remember_checksums(out, manifest)
    return out


def _remember_checksums(out: Path, manifest: Manifest) -> None:
    """The files were hashed as they were written; a rename of their directory changes
    none of their stat signatures, so the first load need not hash them again."""
    files = {out / TOKENIZER_NAME: manifest.tokenizer_sha256}
    for variant in manifest.variants.values():
        files.update({out / name: sha256 for name, sha256 in variant.files()})
    remember_verified(files)


def _write_directory(tmp: Path, checkpoint: Checkpoint, tokenizer: TokenizerExport, quantize: tuple[str, ...],
                     int8: Int8Settings, variant_io: Mapping[str, str], progress: Callable[[str], None]) -> Manifest:
    """Every file of the model directory contract, the manifest last (returned)."""
    variants, weights = {}, _weights_for_graph(checkpoint)
    for precision in ("fp32", *quantize):
        progress(f"writing {VARIANT_FILES[precision]}")
        variants[precision] = _write_variant(tmp, checkpoint, weights, precision, int8, variant_io[precision])
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


def _check_destination(out: Path, force: bool, quantize: tuple[str, ...], variant_io: Mapping[str, str]) -> None:
    unknown = [q for q in quantize if q not in PRECISIONS or q == "fp32"]
    if unknown:
        raise SourceError(f"unknown quantization {unknown[0]!r}; choose from: {', '.join(PRECISIONS[1:])}")
    for precision in ("fp32", *quantize):
        if variant_io.get(precision) not in KNOWN_IO:
            raise SourceError(f"variant_io[{precision!r}] is {variant_io.get(precision)!r}; choose from: {', '.join(KNOWN_IO)}")
    if out.exists() and not force:
        raise SourceError(f"{out} already exists; pass --force (force=True) to replace it, or choose another OUT_DIR")
    if out.exists() and not out.is_dir():
        raise SourceError(f"{out} exists and is not a directory; choose another OUT_DIR")


def _weights_for_graph(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint's tensors; a tied LM head is `wte.weight` itself, stored once."""
    weights = dict(checkpoint.weights)
    if checkpoint.spec.tied_lm_head:
        weights.pop("lm_head.weight", None)
    return weights


def _write_variant(tmp: Path, checkpoint: Checkpoint, weights: dict[str, np.ndarray], precision: str, int8: Int8Settings,
                   io: str) -> Variant:
    spec, linear = checkpoint.spec, linear_for(precision, int8)
    path = tmp / VARIANT_FILES[precision]
    data = save_with_external_data(build_model(dict(weights), spec, linear, io), path)  # a copy: quantizers add their tensors to it
    return Variant(file=path.name, sha256=sha256_file(path), io=io,
                   quantization=linear.quantization(spec.architecture, spec.tied_lm_head),
                   data_file=data.name, data_sha256=sha256_file(data))


def linear_for(precision: str, int8: Int8Settings = Int8Settings()) -> Linear:
    """The matmul strategy that writes a precision's graph."""
    return {"fp32": Fp32Linear, "int8": lambda: Int8Linear(int8), "int4": Int4Linear}[precision]()


def save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    """Write the graph to `path` and its tensors to `path` + ".data" (returned), large ones at
    64 KiB-aligned offsets: onnxruntime then maps them from the file instead of copying
    them out of a protobuf, so a weight it has repacked for its kernels does not stay in
    memory twice, and sessions start faster."""
    data = path.with_name(path.name + ".data")
    with open(data, "wb") as f:
        for tensor in model.graph.initializer:
            if len(tensor.raw_data) < EXTERNAL_MIN_BYTES:
                continue
            if len(tensor.raw_data) >= ALIGN_MIN_BYTES:
                f.write(b"\0" * (-f.tell() % ALIGNMENT))
            offset = f.tell()
            f.write(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(f.tell() - offset))):
                tensor.external_data.add(key=key, value=value)
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


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished directory into place; an old one (with --force) goes only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


