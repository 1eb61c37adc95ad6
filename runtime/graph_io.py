"""The graphs' input and output names and the two I/O conventions, defined once for the
graph builder (`gpt2_onnx.export.graph`) and the runtime (`gpt2_onnx.session`).

`past_key_values`, the ecosystem's (optimum, onnxruntime-genai), which other tools load:

    input_ids, position_ids [batch, seq]; attention_mask [batch, past_len + seq]
    past_key_values.{i}.key|value [batch, n_head, past_len, head_dim]
    → logits [batch, kept, vocab]; present.{i}.key|value [batch, n_head, past_len + seq, head_dim]

`kv_buffer`, what the runtime runs: one preallocated buffer per layer and kind that
attention (onnxruntime's GroupQueryAttention) writes in place, so no step copies the cache:

    input_ids, position_ids [batch, seq]
    seqlens_k [batch] int32 = each row's real tokens after this call - 1
    total_sequence_length [] int32 = max over rows of seqlens_k + 1
    past_key_values.{i}.key|value [batch, n_head, capacity, head_dim], bound to present.{i}.* too
    → logits [batch, kept, vocab]

Rows hold their real tokens from position 0 (no padding); every row of a call adds `seq`
tokens after its own past. Both take an optional scalar `logits_to_keep` (default 0: every
position; the runtime passes how many last positions it needs).
"""

from __future__ import annotations

IO_PAST_KEY_VALUES = "past_key_values"
IO_KV_BUFFER = "kv_buffer"
KNOWN_IO = (IO_PAST_KEY_VALUES, IO_KV_BUFFER)

INPUT_IDS = "input_ids"
POSITION_IDS = "position_ids"
ATTENTION_MASK = "attention_mask"
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
LOGITS_TO_KEEP = "logits_to_keep"
LOGITS = "logits"
POSITION_TABLE = "wpe.weight"  # the initializer position_ids index: [n_positions, n_embd], the checkpoint's name
KV_KINDS = ("key", "value")


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


def cache_names(n_layer: int, name=past_name) -> list[str]:
    """Key, value of layer 0, then layer 1, …: the order the runtime keeps its buffers in."""
    return [name(i, kind) for i in range(n_layer) for kind in KV_KINDS]
