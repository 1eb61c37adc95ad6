"""What the JavaScript package (`web/`) takes from the Python runtime, as data.

The browser and Node.js editions decode like the runtime only if they read the same facts:
the model directory's format version, file names and architecture fields, the graphs' I/O names,
the code points WordPiece decoding treats as CJK, each precision's files and kernel quirks
(`min_call_rows`), and every generation option's kind, bounds and default. They are defined once,
in the runtime; this module writes them to `web/src/contract.js`, an ES module
(`python -m gpt2_onnx.apps.web_contract > web/src/contract.js`), and a test checks that the
committed file is what the runtime says.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from gpt2_onnx import graph_io, manifest, precisions, requests
from gpt2_onnx.logits import TOP_P_CANDIDATES
from gpt2_onnx.option_registry import OPTIONS
from gpt2_onnx.options import GenerationConfig
from gpt2_onnx.text import CJK_RANGES

CONTRACT_PATH = Path("web") / "src" / "contract.js"  # relative to the repository


def contract() -> dict[str, Any]:
    """The facts the JavaScript package reads, as JSON-ready data."""
    defaults = {f.name: f.default for f in fields(GenerationConfig)}
    return {
        "format_version": manifest.FORMAT_VERSION,
        "files": {"manifest": manifest.MANIFEST_NAME, "tokenizer": manifest.TOKENIZER_NAME},
        "architecture": [f.name for f in fields(manifest.Architecture)],
        "decode": {"wordpiece_cjk": manifest.DECODE_WORDPIECE_CJK, "tokenizer": manifest.DECODE_TOKENIZER},
        "cjk_ranges": [list(r) for r in CJK_RANGES],
        "io": {
            "convention": graph_io.IO_KV_BUFFER,
            "input_ids": graph_io.INPUT_IDS,
            "position_ids": graph_io.POSITION_IDS,
            "seqlens_k": graph_io.SEQLENS_K,
            "total_sequence_length": graph_io.TOTAL_SEQUENCE_LENGTH,
            "logits_to_keep": graph_io.LOGITS_TO_KEEP,
            "logits": graph_io.LOGITS,
            "past": graph_io.past_name("{layer}", "{kind}"),
            "present": graph_io.present_name("{layer}", "{kind}"),
            "kv_kinds": list(graph_io.KV_KINDS),
        },
        "precisions": [
            {
                "name": p.name,
                "graph_file": p.graph_file,
                "data_file": p.data_file,
                "min_call_rows": p.min_call_rows,
                "webgpu": p.webgpu,
            }
            for p in precisions.PRECISIONS
        ],
        "default_precision": precisions.DEFAULT_PRECISION,
        "devices": list(precisions.WEB_DEVICES),
        "ecosystem_graph": precisions.ECOSYSTEM_GRAPH,
        "options": [
            {
                "name": o.name,
                "kind": o.kind,
                "low": o.low,
                "high": o.high,
                "open_low": o.open_low,
                "choices": list(o.choices),
                "nullable": o.nullable,
                "allowed": o.allowed,
                "default": _json_default(defaults[o.name]),
            }
            for o in OPTIONS
        ],
        "top_p_candidates": TOP_P_CANDIDATES,
        "finish": {
            "stop": requests.FINISH_STOP,
            "stop_string": requests.FINISH_STOP_STRING,
            "length": requests.FINISH_LENGTH,
        },
    }


def _json_default(value: Any) -> Any:
    """A default as JSON holds it: tuples as lists (an id map's () as [], the [[id, bias], ...] pairs it holds)."""
    return list(value) if isinstance(value, tuple) else value


def contract_module() -> str:
    """`web/src/contract.js`: the contract as an ES module (Node.js 20 and browsers import it without
    JSON-module support)."""
    body = json.dumps(contract(), indent=2, ensure_ascii=False)
    header = "// Written by `python -m gpt2_onnx.apps.web_contract`: do not edit (tests/test_web.py checks it)."
    return f"{header}\nexport const CONTRACT = {body};\n"


if __name__ == "__main__":
    sys.stdout.write(contract_module())
