"""Results → markdown table (with the ratio of gpt2-onnx to every peer) and PNG plots."""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

from gpt2_onnx.precisions import PRECISIONS

from .engines import ours_name

OURS = tuple(ours_name(p.name) for p in sorted(PRECISIONS, key=lambda p: p.size_factor))  # smallest first
CEILING_STYLES = (":", "--", "-.", (0, (1, 4)))  # one per precision, in the table's order


def _fmt(value, digits=1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def speed_markdown(doc: dict, command: str) -> str:
    spec, engines = doc["spec"], doc["engines"]
    ttft = [str(n) for n in spec["ttft_prompts"]]
    batches = [str(b) for b in spec["batches"]]
    m = doc["machine"]
    lines = [
        "# Speed",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']} ({m.get('isa', 'instruction set not recorded')}), {m['cores']} cores, {m['threads']} "
        f"threads; Python {m['python']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + "  ",
        f"Checkpoint: {doc['architecture']['n_layer']} layers × {doc['architecture']['n_embd']}, vocab "
        f"{doc['architecture']['vocab_size']}; "
        f"greedy, prompt {spec['decode_prompt']} → {spec['new_tokens']} new tokens; medians of {spec['reps']} runs "
        f"after {spec['warmup']} warm-up runs; "
        f"engines measured in {spec.get('rounds', 1)} interleaved round(s), each figure the best round's.",
        "",
        "| engine | decode tok/s (batch 1) | ms/token | efficiency | "
        + " | ".join(f"TTFT {n} ms" for n in ttft)
        + " | "
        + " | ".join(f"batch {b} tok/s" for b in batches)
        + " | cold start s | peak RSS MB | size MB |",
        "|---" * (6 + len(ttft) + len(batches) + 1) + "|",
    ]
    for name, r in engines.items():
        cells = [
            _fmt(r["decode_tokens_per_s"]),
            _fmt(r["decode_ms_per_token"], 2),
            f"{r['efficiency']:.0%}",
            *(_fmt(r["time_to_first_token_ms"].get(n)) for n in ttft),
            *(_fmt(r["throughput_tokens_per_s"].get(b)) for b in batches),
            _fmt(r["cold_start_s"], 2),
            _fmt(r["peak_rss_mb_first_token"], 0),
            _fmt(r["size_mb"], 1),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    c = doc["weights_only_ceiling_ms"]
    ceilings = ", ".join(f"{p.upper()} {ms:.2f} ms ({1e3 / ms:.0f} tok/s)" for p, ms in c.items())
    lines += [
        "",
        f"Weights-only ceiling (one decode step's weight matmuls alone): {ceilings}. "
        "Efficiency = ceiling time / the engine's per-token time, against the ceiling of its precision.",
        "",
    ]
    lines += ratio_markdown(doc)
    for name, why in doc.get("skipped", {}).items():
        lines.append(f"- skipped {name}: {why}")
    return "\n".join(lines) + "\n"


def ratio_markdown(doc: dict) -> list[str]:
    """×: how many times better gpt2-onnx is (higher throughput, lower time, size, memory)."""
    engines, spec = doc["engines"], doc["spec"]
    b = str(spec["batches"][0]) if spec["batches"] else None
    n = "256" if "256" in map(str, spec["ttft_prompts"]) else str(spec["ttft_prompts"][-1])
    lines = [
        f"| gpt2-onnx vs peer | decode (batch 1) | TTFT {n} | batch {b} | cold start | peak RSS | size |",
        "|---" * 7 + "|",
    ]
    for ours in OURS:
        if ours not in engines:
            continue
        o = engines[ours]
        for peer, p in engines.items():
            if peer in OURS:
                continue
            cells = [
                o["decode_tokens_per_s"] / p["decode_tokens_per_s"],
                p["time_to_first_token_ms"][n] / o["time_to_first_token_ms"][n],
                o["throughput_tokens_per_s"][b] / p["throughput_tokens_per_s"][b] if b else None,
                p["cold_start_s"] / o["cold_start_s"],
                p["peak_rss_mb_first_token"] / o["peak_rss_mb_first_token"],
                p["size_mb"] / o["size_mb"],
            ]
            lines.append(f"| {ours} vs {peer} | " + " | ".join("–" if v is None else f"{v:.2f}×" for v in cells) + " |")
    return lines + [""]


def speed_plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = doc["engines"]
    names = list(engines)
    colors = ["#d62728" if n.startswith("gpt2-onnx") else "#7f7f7f" for n in names]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    ax.barh(names, [engines[n]["decode_tokens_per_s"] for n in names], color=colors)
    for (precision, rate), style in zip(doc["weights_only_ceiling_tokens_per_s"].items(), cycle(CEILING_STYLES)):
        ax.axvline(rate, color="k", linestyle=style, label=f"{precision} weights-only ceiling")
    ax.set_title("decode tokens/s, batch 1 (higher: better)")
    ax.legend(fontsize=8)
    ax.invert_yaxis()
    _grouped(
        axes[0][1], engines, names, "time_to_first_token_ms", "time to first token ms, by prompt length (lower: better)"
    )
    _grouped(
        axes[1][0], engines, names, "throughput_tokens_per_s", "throughput tokens/s, by batch size (higher: better)"
    )
    ax = axes[1][1]
    ax.barh(names, [engines[n]["size_mb"] for n in names], color=colors, label="model size MB")
    ax.barh(
        names,
        [engines[n]["peak_rss_mb_first_token"] for n in names],
        color="none",
        edgecolor="k",
        label="peak RSS MB (load + first token)",
    )
    ax.set_title("size on disk and memory, MB (lower: better)")
    ax.legend(fontsize=8)
    ax.invert_yaxis()
    m = doc["machine"]
    fig.suptitle(f"gpt2-onnx vs peers — {m['cpu']} ({m.get('isa', '?')}), {m['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _grouped(ax, engines: dict, names: list[str], key: str, title: str) -> None:
    groups = sorted({g for n in names for g in engines[n][key]}, key=int)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(groups))]
        ax.bar(xs, [engines[name][key].get(g, 0) for g in groups], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups)
    ax.set_title(title)
    ax.legend(fontsize=7)
