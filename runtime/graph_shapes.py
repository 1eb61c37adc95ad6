"""The architecture a graph has, from the graph itself, to check its manifest against.

A manifest that disagrees with its graph would otherwise fail deep in onnxruntime (a
binding of the wrong shape) or, for `n_positions`, only once a sequence outgrows the
position table. Layers, heads and the vocabulary come from the session's I/O metadata;
positions and width from the position table's dims, read from the graph file's protobuf
wire format (the runtime has no `onnx`; the weights are external, so the file is small
and only the fields on the way to those dims are decoded).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort

from .errors import ModelDirectoryError
from .graph_io import KV_KINDS, LOGITS, POSITION_TABLE, past_name
from .manifest import MANIFEST_NAME, Architecture

# field numbers in onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.dims and .name
MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_DIMS, TENSOR_NAME = 7, 5, 1, 8
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def check_graph_architecture(session: ort.InferenceSession, graph_file: Path, architecture: Architecture) -> None:
    """Refuse a manifest whose architecture is not its graph's, with one line naming each field that
    disagrees and what the graph has."""
    found = graph_architecture(session, graph_file)
    wrong = [
        f"architecture.{name} is {getattr(architecture, name)}, the graph has {value}"
        for name, value in found.items()
        if getattr(architecture, name) != value
    ]
    if wrong:
        raise ModelDirectoryError(
            f"{graph_file.parent / MANIFEST_NAME} does not match its graph {graph_file.name}: "
            f"{'; '.join(wrong)}; re-export the model directory"
        )


def graph_architecture(session: ort.InferenceSession, graph_file: Path) -> dict[str, int]:
    """The `Architecture` fields of the graph of `session` (read from `graph_file`): n_layer, n_head
    from its KV inputs [batch, n_head, capacity, head_dim], vocab_size from its logits [batch, kept, vocab],
    n_positions and n_embd from its position table [n_positions, n_embd]."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    n_layer = 0
    while past_name(n_layer, KV_KINDS[0]) in inputs:
        n_layer += 1
    outputs = {o.name: o.shape for o in session.get_outputs()}
    positions = initializer_dims(graph_file, POSITION_TABLE)
    if n_layer == 0 or LOGITS not in outputs or positions is None or len(positions) != 2:
        raise ModelDirectoryError(
            f"{graph_file} is not a gpt2-onnx graph (no KV inputs, logits or position table "
            f"{POSITION_TABLE}); re-export the model directory"
        )
    return {
        "n_layer": n_layer,
        "n_head": inputs[past_name(0, KV_KINDS[0])][1],
        "n_embd": positions[1],
        "vocab_size": outputs[LOGITS][-1],
        "n_positions": positions[0],
    }


def initializer_dims(graph_file: Path, name: str) -> tuple[int, ...] | None:
    """The dims of the initializer `name` of an ONNX file (None: no such initializer)."""
    try:
        model = memoryview(graph_file.read_bytes())
        for graph in _fields(model, MODEL_GRAPH):
            for tensor in _fields(graph, GRAPH_INITIALIZER):
                if bytes(next(_fields(tensor, TENSOR_NAME), b"")) == name.encode():
                    return tuple(_dims(tensor))
    except (OSError, IndexError, ValueError) as e:
        raise ModelDirectoryError(f"cannot read {graph_file} ({e}); re-export the model directory") from None
    return None


def _dims(tensor: memoryview) -> Iterator[int]:
    """TensorProto.dims: repeated int64, one varint per field or packed into one field."""
    for wire, value in _wire_fields(tensor, TENSOR_DIMS):
        if wire == VARINT:
            yield value
        else:
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                yield dim


def _fields(message: memoryview, number: int) -> Iterator[memoryview]:
    """The payloads of the length-delimited (message, string) fields `number` of a message."""
    return (value for wire, value in _wire_fields(message, number) if wire == LENGTH_DELIMITED)


def _wire_fields(message: memoryview, number: int) -> Iterator[tuple[int, int | memoryview]]:
    """(wire type, value) of each field `number` of a protobuf message; the others are skipped unread."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        wire = key & 7
        if wire == VARINT:
            value, pos = _varint(message, pos)
        elif wire in (LENGTH_DELIMITED, FIXED64, FIXED32):
            size, pos = _varint(message, pos) if wire == LENGTH_DELIMITED else (8 if wire == FIXED64 else 4, pos)
            if pos + size > len(message):
                raise ValueError("truncated protobuf")
            value, pos = message[pos : pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire} is not one ONNX files use")
        if key >> 3 == number:
            yield wire, value


def _varint(buffer: memoryview, pos: int) -> tuple[int, int]:
    """The base-128 varint at `pos` (IndexError if the buffer ends inside it) and the position after it."""
    value = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
