"""The model-directory contract between the exporter and the runtime.

A model directory holds `model.onnx` (FP32), optional quantized variants such as
`model.int8.onnx`, `tokenizer.json`, the checkpoint's `config.json` unchanged,
and this manifest, `gpt2_onnx.json`. The manifest is versioned: the runtime
refuses a format version it does not know, and files whose sha256 differs
(`gpt2_onnx.checksums`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ModelDirectoryError

FORMAT_VERSION = 1
MANIFEST_NAME = "gpt2_onnx.json"
TOKENIZER_NAME = "tokenizer.json"
CONFIG_NAME = "config.json"

# Graph I/O conventions a variant can follow. "past_key_values": the ecosystem's
# (optimum, onnxruntime-genai) inputs input_ids, attention_mask, position_ids,
# past_key_values.{i}.key|value [batch, n_head, past_len, head_dim]; outputs
# logits [batch, seq, vocab] and present.{i}.key|value [batch, n_head, total_len, head_dim];
# plus an optional scalar input logits_to_keep (default 0: all positions; the runtime passes 1).
IO_PAST_KEY_VALUES = "past_key_values"
LOGITS_TO_KEEP = "logits_to_keep"
# "kv_buffer": a fixed-size KV buffer that the graph writes in place (onnxruntime's
# GroupQueryAttention with past and present bound to one buffer), so no step copies the
# cache. Inputs input_ids, position_ids [batch, seq]; seqlens_k [batch] int32 = each row's
# real tokens after this call - 1; total_sequence_length [] int32 = max over rows of
# seqlens_k + 1; past_key_values.{i}.key|value [batch, n_head, capacity, head_dim], bound to
# present.{i}.key|value as well; logits_to_keep. Rows hold their real tokens from position 0
# (no left padding): a prompt is run from an empty buffer, or one new token per row.
IO_KV_BUFFER = "kv_buffer"
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
KNOWN_IO = (IO_PAST_KEY_VALUES, IO_KV_BUFFER)

# How generated ids become text. "wordpiece_cjk": BERT WordPiece pieces joined
# without the spaces WordPiece decoding puts around CJK characters and
# punctuation (the uer family). "tokenizer": tokenizer.json's own decoder
# (byte-level BPE of English GPT-2).
DECODE_WORDPIECE_CJK = "wordpiece_cjk"
DECODE_TOKENIZER = "tokenizer"
KNOWN_DECODE = (DECODE_WORDPIECE_CJK, DECODE_TOKENIZER)


@dataclass(frozen=True)
class Architecture:
    """GPT-2 shape numbers, read from the checkpoint's config."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class Conventions:
    """How this checkpoint family must be prompted, stopped and decoded."""

    prompt_prefix_ids: tuple[int, ...]  # prepended to every prompt, e.g. (101,) = [CLS]
    stop_token_ids: tuple[int, ...]  # generation ends at any of these, e.g. (102,) = [SEP]
    pad_token_id: int  # fills left padding and finished rows; never attended to
    special_token_ids: tuple[int, ...]  # stripped from decoded text
    decode: str  # one of KNOWN_DECODE


@dataclass(frozen=True)
class Quantization:
    """How a variant's weights were quantized."""

    method: str  # "dynamic": activations quantized at run time per call
    weight_type: str  # "int8"
    symmetric: bool
    per_channel: bool  # one scale per output column of each weight
    weights: tuple[str, ...]  # the checkpoint names of the quantized tensors


@dataclass(frozen=True)
class Variant:
    """One ONNX graph of the model: the graph file and, beside it, its weights (`data_file`,
    the graph's external data), each with its sha256."""

    file: str
    sha256: str
    io: str  # one of KNOWN_IO
    quantization: Quantization | None = None
    data_file: str | None = None  # None: the weights are inside `file`
    data_sha256: str | None = None

    def files(self) -> list[tuple[str, str]]:
        """(name, sha256) of every file the variant reads."""
        return [(self.file, self.sha256)] + ([(self.data_file, self.data_sha256)] if self.data_file else [])


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a model directory."""

    architecture: Architecture
    conventions: Conventions
    variants: dict[str, Variant]  # keyed by precision: "fp32", "int8"
    tokenizer_sha256: str
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    source: dict[str, str | None] = field(default_factory=dict)  # id, revision
    tools: dict[str, str] = field(default_factory=dict)  # package -> version
    format_version: int = FORMAT_VERSION

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
            f"export one with `gpt2-onnx export SOURCE {model_dir} --force`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("format_version")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ModelDirectoryError(f"{path} is not valid JSON ({e}); re-export the model directory") from None
    if version != FORMAT_VERSION:
        raise ModelDirectoryError(
            f"{path} has format_version {version!r}, this gpt2-onnx reads version {FORMAT_VERSION}; "
            "re-export the model with this version of gpt2-onnx (or install the version that wrote it)"
        )
    try:
        return _parse(raw)
    except ValueError as e:
        raise ModelDirectoryError(f"{path} is malformed: {e}; correct it or re-export the model directory") from None


def _parse(raw: dict[str, Any]) -> Manifest:
    # every field is checked for its type, so a hand-edited manifest fails here, naming the
    # field, rather than deep inside the decoder
    conv = _table(raw, "conventions")
    conventions = Conventions(
        prompt_prefix_ids=_ids(conv, "prompt_prefix_ids", "conventions"),
        stop_token_ids=_ids(conv, "stop_token_ids", "conventions"),
        pad_token_id=_int(conv, "pad_token_id", "conventions", low=0),
        special_token_ids=_ids(conv, "special_token_ids", "conventions"),
        decode=_choice(conv, "decode", "conventions", KNOWN_DECODE),
    )
    arch = _table(raw, "architecture")
    unknown = sorted(set(arch) - {f.name for f in fields(Architecture)})
    if unknown:
        raise ValueError(f"architecture has the unknown field {unknown[0]!r}")
    architecture = Architecture(**{f.name: _int(arch, f.name, "architecture", low=1) for f in fields(Architecture)})
    variants = {name: _variant(_table(raw["variants"], name, "variants"), f"variants.{name}") for name in _table(raw, "variants")}
    return Manifest(
        architecture=architecture,
        conventions=conventions,
        variants=variants,
        tokenizer_sha256=_str(raw, "tokenizer_sha256"),
        generation_defaults=dict(_table(raw, "generation_defaults", default={})),
        source=dict(_table(raw, "source", default={})),
        tools=dict(_table(raw, "tools", default={})),
        format_version=raw["format_version"],
    )


def _variant(v: dict[str, Any], where: str) -> Variant:
    q = _table(v, "quantization", where, default=None)
    quant = None
    if q is not None:  # descriptive only: the graph carries the numbers; its fields need only be the known ones
        try:
            quant = Quantization(**{**q, "weights": tuple(_strs(q, "weights", f"{where}.quantization"))})
        except TypeError:
            names = ", ".join(f.name for f in fields(Quantization))
            raise ValueError(f"the field {where}.quantization must hold exactly {names}, got {sorted(q)}") from None
    data_file = _str(v, "data_file", where, default=None)
    return Variant(file=_str(v, "file", where), sha256=_str(v, "sha256", where), io=_choice(v, "io", where, KNOWN_IO),
                   quantization=quant, data_file=data_file, data_sha256=_str(v, "data_sha256", where, default=None))


_REQUIRED = object()


def _field(table: dict[str, Any], key: str, where: str, default: Any, check, expected: str) -> Any:
    """table[key] if `check` accepts it; a ValueError naming the field and what it must be otherwise."""
    name = f"{where}.{key}" if where else key
    if key not in table:
        if default is _REQUIRED:
            raise ValueError(f"the field {name} is missing")
        return default
    value = table[key]
    if (value is None and default is None) or check(value):
        return value
    raise ValueError(f"the field {name} must be {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(t, key, where="", low=0, default=_REQUIRED) -> int:
    return _field(t, key, where, default, lambda v: _is_int(v) and v >= low, f"an integer ≥ {low}")


def _ids(t, key, where="", default=_REQUIRED) -> tuple[int, ...]:
    ok = lambda v: isinstance(v, list) and all(_is_int(i) and i >= 0 for i in v)  # noqa: E731
    return tuple(_field(t, key, where, default, ok, "a list of token ids (integers ≥ 0)"))


def _str(t, key, where="", default=_REQUIRED) -> str:
    return _field(t, key, where, default, lambda v: isinstance(v, str) and v != "", "a non-empty string")


def _strs(t, key, where="", default=_REQUIRED) -> list[str]:
    return _field(t, key, where, default, lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v), "a list of strings")


def _choice(t, key, where, choices: tuple[str, ...]) -> str:
    return _field(t, key, where, _REQUIRED, lambda v: v in choices, "one of " + ", ".join(choices))


def _table(t, key, where="", default=_REQUIRED) -> dict[str, Any]:
    return _field(t, key, where, default, lambda v: isinstance(v, dict), "a JSON object")
