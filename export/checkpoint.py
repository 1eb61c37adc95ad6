"""Find, validate and load a GPT-2 checkpoint: a local directory or a hub id.

Accepted layouts: uer's (`config.json`, `pytorch_model.bin`, `vocab.txt`, no
`tokenizer.json`), safetensors checkpoints, fine-tunes, and English GPT-2 with
`vocab.json` + `merges.txt`. Weights are read without torch and without running the checkpoint's pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2_onnx.errors import SourceError
from gpt2_onnx.manifest import Architecture
from gpt2_onnx.sources import CHECKPOINT_WEIGHTS, looks_like_path

from .graph import GraphSpec
from .weights import read_tensors

# activation_function → ONNX Gelu's `approximate` attribute
GELU_APPROXIMATE = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
]


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint, weights as FP32 numpy arrays keyed by GPT-2 names without `transformer.`."""

    path: Path
    source_id: str
    revision: str | None
    config: dict[str, Any]
    spec: GraphSpec
    weights: dict[str, np.ndarray]


def load_checkpoint(source: str) -> Checkpoint:
    """Resolve `source`, check its config, load and check its weights."""
    path, source_id, revision = resolve_source(source)
    config = read_config(path)
    spec = graph_spec(config, path)
    weights = load_weights(path)
    check_weights(weights, spec, path)
    return Checkpoint(path, source_id, revision, config, spec, weights)


def resolve_source(source: str) -> tuple[Path, str, str | None]:
    """A local directory as is; a hub id downloaded (with a progress bar) into the hub cache."""
    path = Path(source).expanduser()
    if path.exists() or looks_like_path(source):
        if not path.is_dir():
            raise SourceError(
                f"checkpoint directory {source} does not exist; pass a directory with config.json and weights, or a "
                "hub id"
            )
        return path.resolve(), str(path.resolve()), None
    return _download(source)


def _download(repo_id: str) -> tuple[Path, str, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        local = Path(snapshot_download(repo_id=repo_id, allow_patterns=HUB_FILES))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise SourceError(
            f"{repo_id} is neither a local directory nor a model on the Hugging Face hub; check the spelling or pass a "
            "checkpoint directory"
        ) from None
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        if "Repo id must" in str(e):
            raise SourceError(f"{repo_id} is neither an existing directory nor a valid hub id (owner/name)") from None
        raise SourceError(
            f"cannot download {repo_id} from the Hugging Face hub (no network?: {type(e).__name__}); "
            f"download it where there is network (`hf download {repo_id} --local-dir DIR`) and pass DIR instead"
        ) from None
    return local, repo_id, local.name  # snapshot folders are named by commit hash


def read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{path} has no config.json; a GPT-2 checkpoint directory needs config.json and its weights")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{config_path} is not valid JSON ({e}); restore the checkpoint's config.json") from None
    if config.get("model_type") != "gpt2":
        raise SourceError(
            f"{config_path} has model_type {config.get('model_type')!r}; gpt2-onnx exports GPT-2 checkpoints "
            "(model_type 'gpt2') only"
        )
    return config


def graph_spec(config: dict[str, Any], path: Path) -> GraphSpec:
    activation = config.get("activation_function", "gelu_new")
    if activation not in GELU_APPROXIMATE:
        raise SourceError(
            f"{path}/config.json uses activation_function {activation!r}; supported: {', '.join(GELU_APPROXIMATE)}"
        )
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if config.get(flag):
            raise SourceError(
                f"{path}/config.json sets {flag}, which gpt2-onnx does not implement; export a checkpoint without it"
            )
    if config.get("scale_attn_weights") is False:
        raise SourceError(f"{path}/config.json sets scale_attn_weights false, which gpt2-onnx does not implement")
    try:
        arch = Architecture.from_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{path}/config.json lacks a valid {e} entry; restore the checkpoint's config.json") from None
    if arch.n_embd % arch.n_head:
        raise SourceError(f"{path}/config.json: n_embd {arch.n_embd} is not a multiple of n_head {arch.n_head}")
    return GraphSpec(
        architecture=arch,
        layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
        gelu_approximate=GELU_APPROXIMATE[activation],
        tied_lm_head=bool(config.get("tie_word_embeddings", True)),
    )


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's weights (safetensors first) as FP32 numpy, read without torch (see `weights`)."""
    file = next((path / f for f in CHECKPOINT_WEIGHTS if (path / f).is_file()), None)
    if file is None:
        raise SourceError(f"{path} has no weights; expected one of {', '.join(CHECKPOINT_WEIGHTS)}")
    weights = {}
    for name, array in read_tensors(file).items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not weights
        weights[name] = array.astype(np.float32, copy=False)
    return weights


def expected_shapes(spec: GraphSpec, n_inner: int) -> dict[str, tuple[int, ...]]:
    a = spec.architecture
    c = a.n_embd
    shapes = {"wte.weight": (a.vocab_size, c), "wpe.weight": (a.n_positions, c), "ln_f.weight": (c,), "ln_f.bias": (c,)}
    for i in range(a.n_layer):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            shapes[p + ln + ".weight"] = shapes[p + ln + ".bias"] = (c,)
        shapes.update(
            {
                p + "attn.c_attn.weight": (c, 3 * c),
                p + "attn.c_attn.bias": (3 * c,),
                p + "attn.c_proj.weight": (c, c),
                p + "attn.c_proj.bias": (c,),
                p + "mlp.c_fc.weight": (c, n_inner),
                p + "mlp.c_fc.bias": (n_inner,),
                p + "mlp.c_proj.weight": (n_inner, c),
                p + "mlp.c_proj.bias": (c,),
            }
        )
    if not spec.tied_lm_head:
        shapes["lm_head.weight"] = (a.vocab_size, c)
    return shapes


def check_weights(weights: dict[str, np.ndarray], spec: GraphSpec, path: Path) -> None:
    n_inner = (
        weights["h.0.mlp.c_fc.weight"].shape[1] if "h.0.mlp.c_fc.weight" in weights else 4 * spec.architecture.n_embd
    )
    for name, shape in expected_shapes(spec, n_inner).items():
        if name not in weights:
            raise SourceError(
                f"the weights in {path} lack {name}, which config.json requires; weights and config.json do not belong "
                "together"
            )
        if weights[name].shape != shape:
            raise SourceError(
                f"{name} in {path} has shape {list(weights[name].shape)}, config.json implies {list(shape)}; "
                "weights and config.json do not belong together"
            )
