"""`bench --only serve`'s results → markdown (with the issue's targets checked) and a PNG."""

from __future__ import annotations

from pathlib import Path

from .report import _fmt
from .serve_bench import OPTIMUM, OURS_BATCHING


def targets(doc: dict) -> list[tuple[str, float | None, float | None, str]]:
    """The issue's targets: (what, measured, bound, "≥" or "≤"); None where a server is missing."""
    spec, ref, servers, lp = doc["spec"], doc["offline"], doc["servers"], doc["long_prompt"]

    def at(name, level, key):
        return servers.get(name, {}).get(str(level), {}).get(key)

    top, itl = spec["target_level"], spec["itl_level"]
    ours, peer = at(OURS_BATCHING, top, "tokens_per_s"), at(OPTIMUM, top, "tokens_per_s")
    return [
        (
            f"{top} clients: tok/s ≥ 0.8 × offline batch-{ref['batch']} Generator",
            ours,
            0.8 * ref["batch_tokens_per_s"],
            "≥",
        ),
        (f"{top} clients: tok/s ≥ 5 × {OPTIMUM}", ours, 5 * peer if peer else None, "≥"),
        (
            f"{itl} clients: p99 inter-token ms ≤ 3 × batch-1 step",
            at(OURS_BATCHING, itl, "itl_p99_ms"),
            3 * ref["step_ms"],
            "≤",
        ),
        (
            f"{spec['long_prompt_tokens']}-token prompt arriving: p99 inter-token rise ms ≤ one prefill chunk",
            lp and lp["rise_ms"],
            ref["prefill_chunk_ms"],
            "≤",
        ),
    ]


def serve_markdown(doc: dict) -> str:
    spec, ref, m, lp = doc["spec"], doc["offline"], doc["machine"], doc["long_prompt"]
    lines = [
        "# Serving under load",
        "",
        f"Command: `{doc['command']}`  ",
        f"Machine: {m['cpu']} ({m.get('isa', '?')}), {m['cores']} cores, {doc['threads']} threads; INT8 everywhere.  ",
        f"Each client streams /v1/completions back to back ({spec['requests_per_client']} request(s) each): a "
        f"{spec['prompt_tokens']}-token prompt (each its own) → {spec['max_tokens']} tokens, greedy; one warm-up wave "
        "first. "
        "Times are arrivals of SSE chunks at the client; inter-token = gap between consecutive chunks.",
        "",
        "| server | clients | tok/s | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | p99 ms | chunks/token | errors "
        "|",
        "|---" * 9 + "|",
    ]
    for name, levels in doc["servers"].items():
        for n, r in levels.items():
            cells = [
                _fmt(r["tokens_per_s"]),
                *(_fmt(r[k]) for k in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")),
                _fmt(r["chunks_per_token"], 2),
                str(len(r["errors"])),
            ]
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Offline reference (`Generator.generate_ids`, no server, medians of {spec['offline_reps']}): batch-1 step "
        f"{ref['step_ms']:.2f} ms; batch-{ref['batch']} {ref['batch_tokens_per_s']:,.0f} tok/s; a "
        f"{spec['long_prompt_tokens']}-token "
        f"prefill {ref['long_prefill_ms']:.1f} ms = {ref['prefill_chunk_ms']:.1f} ms per {spec['prefill_chunk']}-token "
        "chunk.",
    ]
    if lp:
        lines += [
            "",
            f"A {spec['long_prompt_tokens']}-token prompt arriving among {lp['clients']} streams: their p99 "
            "inter-token "
            f"{_fmt(lp['itl_p99_without_ms'])} ms without it, {_fmt(lp['itl_p99_with_ms'])} ms with it; "
            f"its own time to first token {_fmt(lp['long_prompt_ttft_ms'])} ms.",
        ]
    lines += ["", "| target | measured | bound | met |", "|---|---|---|---|"]
    for what, value, bound, op in targets(doc):
        met = (
            "–"
            if value is None or bound is None
            else ("yes" if (value >= bound if op == "≥" else value <= bound) else "**no**")
        )
        lines.append(f"| {what} | {_fmt(value)} | {op} {_fmt(bound)} | {met} |")
    lines += [f"- skipped {name}: {why}" for name, why in doc["skipped"].items()]
    return "\n".join(lines) + "\n"


def serve_plot(doc: dict, path: Path) -> None:
    """Tokens/s, p99 time to first token and p99 inter-token gap against clients, a line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (
        ("tokens_per_s", "aggregate tokens/s"),
        ("ttft_p99_ms", "p99 time to first token (ms)"),
        ("itl_p99_ms", "p99 inter-token (ms)"),
    )
    for ax, (key, title) in zip(axes, panels):
        for name, levels in doc["servers"].items():
            ax.plot([int(n) for n in levels], [r[key] for r in levels.values()], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="concurrent streaming clients", title=title)
        ax.xaxis.set_minor_locator(NullLocator())  # only the levels measured are labelled
        ax.set_xticks(doc["spec"]["levels"], [str(n) for n in doc["spec"]["levels"]])
    ref = doc["offline"]
    axes[0].axhline(ref["batch_tokens_per_s"], ls=":", color="gray", label=f"offline batch-{ref['batch']} Generator")
    axes[2].axhline(ref["step_ms"], ls=":", color="gray", label="offline batch-1 step")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
