"""The registry of known checkpoints: their family (conventions) and generation defaults.

`models/` is also where `gpt2-onnx export` users conventionally put exported model
directories (git-ignored); only `registry.json` is part of the package.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

WORDPIECE_FAMILY = "uer-chinese"
BPE_FAMILY = "gpt2"


@cache
def registry() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "registry.json").read_text(encoding="utf-8"))


def default_model() -> str:
    """The hub id used when no model is named."""
    return registry()["default"]


def family_of(source_id: str, tokenizer_kind: str) -> str:
    """A known hub id's family; otherwise the family its tokenizer implies ("wordpiece" or "bpe")."""
    known = registry()["checkpoints"].get(source_id)
    return known or (WORDPIECE_FAMILY if tokenizer_kind == "wordpiece" else BPE_FAMILY)


def generation_defaults(family: str) -> dict[str, Any]:
    return dict(registry()["families"][family]["generation_defaults"])
