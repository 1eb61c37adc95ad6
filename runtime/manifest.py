"""The model-directory contract between the exporter and the runtime.

A model directory holds, per precision (`gpt2_onnx.precisions`), a graph the runtime runs
(`model.{precision}.onnx`, `kv_buffer` I/O) and its weights (`….onnx.data`); FP32 also
`model.onnx`, the same weights in the ecosystem's I/O convention for other tools
(`gpt2_onnx.graph_io`). Beside them `tokenizer.json`, the checkpoint's `config.json`
unchanged, and this manifest, `gpt2_onnx.json`. The manifest is versioned and typed: the
runtime refuses a format version it does not know, a field of the wrong type, and files
whose sha256 differs (`gpt2_onnx.checksums`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelDirectoryError
from .graph_io import IO_KV_BUFFER, KNOWN_IO

FORMAT_VERSION = 2  # 2: typed quantization record, every variant with a kv_buffer graph, no pad id
MANIFEST_NAME = "gpt2_onnx.json"
TOKENIZER_NAME = "tokenizer.json"
CONFIG_NAME = "config.json"

# How generated ids become text. "wordpiece_cjk": BERT WordPiece pieces joined
# without the spaces WordPiece decoding puts around CJK characters and
# punctuation (the uer family). "tokenizer": tokenizer.json's own decoder
# (byte-level BPE of English GPT-2).
DECODE_WORDPIECE_CJK = "wordpiece_cjk"
DECODE_TOKENIZER = "tokenizer"
KNOWN_DECODE = (DECODE_WORDPIECE_CJK, DECODE_TOKENIZER)


def _check_known(field_name: str, value: str, known: tuple[str, ...]) -> None:
    """A field that names one of a few known things; the error lists them."""
    if value not in known:
        raise ValueError(f"{field_name} must be one of {', '.join(known)}, got {value!r}")


@dataclass(frozen=True)
class Architecture:
    """GPT-2 shape numbers, read from the checkpoint's config."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be ≥ 1, got {getattr(self, f.name)}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Architecture:
        """The shape numbers of a checkpoint's config.json; KeyError for a missing entry,
        TypeError or ValueError for one that is not a positive whole number."""
        return cls(**{f.name: int(config[f.name]) for f in dataclasses.fields(cls)})

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_bytes_per_token(self) -> int:
        """FP32 keys and values of one position in every layer."""
        return self.n_layer * 2 * self.n_embd * 4


@dataclass(frozen=True)
class Conventions:
    """How this checkpoint family must be prompted, stopped and decoded."""

    prompt_prefix_ids: tuple[int, ...]  # prepended to every prompt, e.g. (101,) = [CLS]
    stop_token_ids: tuple[int, ...]  # generation ends at any of these, e.g. (102,) = [SEP]
    special_token_ids: tuple[int, ...]  # stripped from decoded text
    decode: str  # one of KNOWN_DECODE

    def __post_init__(self):
        _check_known("decode", self.decode, KNOWN_DECODE)


@dataclass(frozen=True)
class Quantization:
    """How a variant's weights are stored, and how its activations are quantized at run time."""

    scheme: str  # "per_channel": one scale per output column; "blockwise": one per block of inputs
    bits: int
    block_size: int | None  # blockwise: inputs sharing a scale
    symmetric: bool
    zero_point: int | None  # the stored value that means 0; None: one per block, stored beside its scale
    max_value: int  # largest stored value (symmetric: magnitude around the zero point, 63 for 7-bit INT8)
    activations: str  # "int8_per_token", "int8_per_block" (each token's row on its own grid) or "float"
    weights: tuple[str, ...]  # the checkpoint names of the tensors stored in `bits`
    per_channel_8bit: tuple[str, ...] = ()  # blockwise: tensors kept at 8 bits per output unit (int8's scheme)


@dataclass(frozen=True)
class Graph:
    """One ONNX graph file of a variant, in one I/O convention."""

    file: str
    sha256: str
    io: str  # one of KNOWN_IO

    def __post_init__(self):
        _check_known("io", self.io, KNOWN_IO)


@dataclass(frozen=True)
class Variant:
    """One precision of the model: its graphs and the weights file they share."""

    graphs: tuple[Graph, ...]
    data_file: str
    data_sha256: str
    quantization: Quantization | None = None

    def graph(self, io: str = IO_KV_BUFFER) -> Graph:
        found = [g for g in self.graphs if g.io == io]
        if not found:
            raise ValueError(f"no graph in the {io} convention")
        return found[0]

    def files(self) -> list[tuple[str, str]]:
        """(name, sha256) of every file the variant holds."""
        return [(g.file, g.sha256) for g in self.graphs] + [(self.data_file, self.data_sha256)]


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a model directory."""

    architecture: Architecture
    conventions: Conventions
    variants: dict[str, Variant]  # keyed by precision name (`gpt2_onnx.precisions`)
    tokenizer_sha256: str
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    source: dict[str, str | None] = field(default_factory=dict)  # id, revision, family
    tools: dict[str, str] = field(default_factory=dict)  # package -> version
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        for variant in self.variants.values():
            variant.graph(IO_KV_BUFFER)  # the runtime runs this one

    def checksummed_files(self) -> list[tuple[str, str]]:
        """(name, sha256) of every file whose sha256 the manifest records: the tokenizer and each variant's."""
        return [(TOKENIZER_NAME, self.tokenizer_sha256)] + [f for v in self.variants.values() for f in v.files()]

    def file_names(self) -> frozenset[str]:
        """Every file of the model directory this manifest describes: the checksummed ones, the checkpoint's
        config and the manifest itself. A directory holding anything else holds files export did not write."""
        return frozenset((MANIFEST_NAME, CONFIG_NAME, *(name for name, _ in self.checksummed_files())))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def read_manifest(model_dir: Path) -> Manifest:
    """Parse and validate `gpt2_onnx.json`; the files themselves are checked by
    `gpt2_onnx.checksums.verified_paths`."""
    path = model_dir / MANIFEST_NAME
    if not model_dir.is_dir():
        raise ModelDirectoryError(
            f"model directory {model_dir} does not exist; export one with `gpt2-onnx export SOURCE {model_dir}`"
        )
    if not path.is_file():
        raise ModelDirectoryError(
            f"{path} is missing, so {model_dir} is not a gpt2-onnx model directory; "
            f"export one with `gpt2-onnx export SOURCE {model_dir}`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("format_version")
    except OSError as e:
        raise ModelDirectoryError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    except (ValueError, AttributeError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
        raise ModelDirectoryError(f"{path} is not valid JSON ({e}); re-export the model directory") from None
    if version != FORMAT_VERSION:
        source = (raw.get("source") or {}).get("id") if isinstance(raw.get("source"), dict) else None
        raise ModelDirectoryError(
            f"{path} has format_version {version!r}, this gpt2-onnx reads version {FORMAT_VERSION}; re-export it into "
            f"a new directory: `gpt2-onnx export {source or 'SOURCE'} NEW_DIR` (or install the gpt2-onnx that wrote it)"
        )
    try:
        return parse(Manifest, raw, "")
    except ValueError as e:
        raise ModelDirectoryError(f"{path} is malformed: {e}; correct it or re-export the model directory") from None


def parse(cls, raw: Any, where: str):
    """`raw` JSON as an instance of the (frozen dataclass) type `cls`, every field checked
    against its annotation: a ValueError names the field, e.g. `the field architecture.n_layer
    must be int, got 'six'`, so a hand-edited manifest fails here, not deep in the decoder."""

    def wrong(expected: str) -> ValueError:
        return ValueError(f"the field {where or 'manifest'} must be {expected}, got {raw!r}")

    if dataclasses.is_dataclass(cls):
        if not isinstance(raw, dict):
            raise wrong("an object")
        hints, values = typing.get_type_hints(cls), {}
        for f in dataclasses.fields(cls):
            name = f"{where}.{f.name}" if where else f.name
            if f.name in raw:
                values[f.name] = parse(hints[f.name], raw[f.name], name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"the field {name} is missing")
        try:
            return cls(**values)
        except ValueError as e:  # a dataclass's own check: "n_head must be ≥ 1, got 0"
            raise ValueError(f"the field {where + '.' if where else ''}{e}") from None
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin in (types.UnionType, typing.Union):
        if raw is None and type(None) in args:
            return None
        return parse(next(a for a in args if a is not type(None)), raw, where)
    if origin is tuple:
        if not isinstance(raw, list):
            raise wrong(f"a list of {args[0].__name__}")
        return tuple(parse(args[0], item, f"{where}[{k}]") for k, item in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict):
            raise wrong("an object")
        return {k: parse(args[1], v, f"{where}.{k}") for k, v in raw.items()}
    if cls is Any:
        return raw
    if cls is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, cls) or (cls is int and isinstance(raw, bool)):
        raise wrong(cls.__name__)
    return raw
