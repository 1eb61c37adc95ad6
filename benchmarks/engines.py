"""The engines compared: each prepares its artifact once, then loads it and generates greedily.

Every engine gets the same prompt ids and must produce exactly `new_tokens` tokens per
row (no early stop), with the same thread count. Peers are imported only inside the
worker process that measures them; a missing peer is reported, never faked.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2_onnx.precisions import NAMES, QUANTIZED

# An engine's generate: (prompt ids [batch][len], new_tokens) → None; it must run to the end.
GenerateFn = Callable[[list[list[int]], int], None]


@dataclass(frozen=True)
class Engine:
    name: str
    precision: str
    requires: str  # module that must import for this engine to run
    prepare: Callable[[Path, Path], Path]  # (checkpoint, work dir) → artifact dir; done once
    load: Callable[[Path, int], GenerateFn]  # (artifact, threads) → generate function
    files: Callable[[Path], list[Path]]  # what the engine reads from disk to run


# --- gpt2-onnx ---------------------------------------------------------------------------


def ours_name(precision: str) -> str:
    """The engine name of one gpt2-onnx precision."""
    return f"gpt2-onnx {precision}"


def _ours_prepare(checkpoint: Path, work: Path) -> Path:
    from gpt2_onnx.export import export_model

    # always re-exported (seconds): a cached export would measure an older gpt2-onnx
    work.mkdir(parents=True, exist_ok=True)  # export creates OUT_DIR, never its parents
    return export_model(str(checkpoint), work / "gpt2-onnx", quantize=QUANTIZED, force=True, check=False)


def _ours_load(precision: str):
    def load(artifact: Path, threads: int) -> GenerateFn:
        from gpt2_onnx import Generator

        gen = Generator.load(artifact, precision=precision, threads=threads)

        def generate(prompts, new_tokens):
            gen.generate_ids(prompts, max_new_tokens=new_tokens, do_sample=False, stop_token_ids=())

        return generate

    return load


def _ours_files(precision: str):
    def files(artifact: Path) -> list[Path]:
        from gpt2_onnx.manifest import read_manifest

        variant = read_manifest(artifact).variants[precision]
        return [artifact / name for name, _ in variant.files()] + [
            artifact / "tokenizer.json",
            artifact / "gpt2_onnx.json",
        ]

    return files


# --- transformers + torch and optimum share the generate() call ------------------------


def _hf_generate(model) -> GenerateFn:
    import torch
    from transformers import GenerationConfig

    # no eos: every row runs to new_tokens (the uer config's eos 50256 is outside the vocabulary anyway)
    config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True)

    def generate(prompts, new_tokens, streamer=None):
        """Greedy, every row to exactly `new_tokens`; `streamer`: generate()'s, for a server."""
        ids = torch.tensor(prompts)
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                streamer=streamer,
            )

    return generate


def _torch_load(checkpoint: Path, threads: int) -> GenerateFn:
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    return _hf_generate(GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).eval())


def _torch_files(checkpoint: Path) -> list[Path]:
    return [
        p
        for p in checkpoint.iterdir()
        if p.name in ("pytorch_model.bin", "model.safetensors", "config.json", "vocab.txt")
    ]


def _optimum_prepare(precision: str):
    def prepare(checkpoint: Path, work: Path) -> Path:
        from optimum.onnxruntime import ORTModelForCausalLM, ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        fp32 = work / "optimum-fp32"
        if not (fp32 / "model.onnx").exists():
            ORTModelForCausalLM.from_pretrained(checkpoint, export=True, use_cache=True).save_pretrained(fp32)
        if precision == "fp32":
            return fp32
        int8 = work / "optimum-int8"
        if not (int8 / "model_quantized.onnx").exists():
            config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
            ORTQuantizer.from_pretrained(fp32).quantize(save_dir=int8, quantization_config=config)
        return int8

    return prepare


def optimum_model(artifact: Path, threads: int):
    """optimum's ORTModelForCausalLM of an artifact (the quantized model if there is one)."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    name = "model_quantized.onnx" if (artifact / "model_quantized.onnx").exists() else "model.onnx"
    return ORTModelForCausalLM.from_pretrained(artifact, file_name=name, session_options=options, use_cache=True)


def _optimum_load(artifact: Path, threads: int) -> GenerateFn:
    return _hf_generate(optimum_model(artifact, threads))


def _optimum_files(artifact: Path) -> list[Path]:
    return [p for p in artifact.iterdir() if p.suffix in (".onnx", ".onnx_data") or p.name == "config.json"]


# --- CTranslate2 --------------------------------------------------------------------------


def _ct2_prepare(precision: str):
    def prepare(checkpoint: Path, work: Path) -> Path:
        import ctranslate2

        out = work / f"ct2-{precision}"
        if (out / "model.bin").exists():
            return out
        # CTranslate2's GPT-2 converter reads bos/eos tokens, which BertTokenizer lacks: the uer
        # conventions give them ([CLS] starts, [SEP] ends)
        source = work / "ct2-source"
        if not source.exists():
            shutil.copytree(checkpoint, source)
            special = (
                json.loads((source / "special_tokens_map.json").read_text())
                if (source / "special_tokens_map.json").exists()
                else {}
            )
            if (source / "vocab.txt").exists():
                special.update(bos_token="[CLS]", eos_token="[SEP]")
            (source / "special_tokens_map.json").write_text(json.dumps(special))
        converter = ctranslate2.converters.TransformersConverter(str(source))
        converter.convert(str(out), quantization=None if precision == "fp32" else "int8", force=True)
        return out

    return prepare


def _ct2_load(precision: str):
    def load(artifact: Path, threads: int) -> GenerateFn:
        import ctranslate2

        generator = ctranslate2.Generator(
            str(artifact),
            device="cpu",
            compute_type="float32" if precision == "fp32" else "int8",
            intra_threads=threads,
            inter_threads=1,
        )
        vocab = _ct2_vocabulary(artifact)

        def generate(prompts, new_tokens):
            tokens = [[vocab[i] for i in p] for p in prompts]
            generator.generate_batch(
                tokens,
                max_length=new_tokens,
                min_length=new_tokens,
                sampling_topk=1,
                include_prompt_in_result=False,
                max_batch_size=len(prompts),
            )

        return generate

    return load


def _ct2_vocabulary(artifact: Path) -> list[str]:
    path = artifact / "vocabulary.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return (artifact / "vocabulary.txt").read_text(encoding="utf-8").splitlines()


def _ct2_files(artifact: Path) -> list[Path]:
    return [p for p in artifact.iterdir() if p.is_file()]


ENGINES = [
    *(Engine(ours_name(p), p, "gpt2_onnx", _ours_prepare, _ours_load(p), _ours_files(p)) for p in NAMES),
    Engine("transformers+torch fp32", "fp32", "torch", lambda c, w: c, _torch_load, _torch_files),
    Engine("optimum-onnx fp32", "fp32", "optimum.onnxruntime", _optimum_prepare("fp32"), _optimum_load, _optimum_files),
    Engine("optimum-onnx int8", "int8", "optimum.onnxruntime", _optimum_prepare("int8"), _optimum_load, _optimum_files),
    Engine("ctranslate2 fp32", "fp32", "ctranslate2", _ct2_prepare("fp32"), _ct2_load("fp32"), _ct2_files),
    Engine("ctranslate2 int8", "int8", "ctranslate2", _ct2_prepare("int8"), _ct2_load("int8"), _ct2_files),
]
BY_NAME = {e.name: e for e in ENGINES}


def random_prompts(prefix_ids: Sequence[int], vocab_size: int, batch: int, length: int, seed: int) -> list[list[int]]:
    """`length` ids: the family's prompt prefix ([CLS] for uer), then ids drawn from the
    ordinary (non-special) part of the vocabulary."""
    rng = np.random.default_rng(seed)
    low = min(1000, vocab_size // 2)
    return [[*prefix_ids] + rng.integers(low, vocab_size, length - len(prefix_ids)).tolist() for _ in range(batch)]
