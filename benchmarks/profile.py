"""onnxruntime's profiler traces, read as where a decode step's time goes.

onnxruntime (native) and onnxruntime-web (WebAssembly) write the same Chrome trace events: one
`model_run` per `run` call and one `<node>_kernel_time` per node executed, with its op type.
The first `skip_runs` runs (the prompt's prefill) are left out, so the figures are per decode step.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path


def op_times(events: list[dict], skip_runs: int = 1) -> dict:
    """Per run after the first `skip_runs`: {"ops": {op type: {"ms", "nodes"}} (slowest first),
    "run_ms": the run's whole time, "between_nodes_ms": what of it no node's kernel accounts for}."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[skip_runs:]
    if not runs:
        raise ValueError(f"the trace holds {skip_runs} run(s) or fewer: nothing to profile after the prefill")
    start, n = runs[0]["ts"], len(runs)
    time_us, nodes = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"]["op_name"]
            time_us[op] += e["dur"]
            nodes[op] += 1
    ops = {op: {"ms": us / n / 1e3, "nodes": nodes[op] // n} for op, us in time_us.most_common()}
    run_ms = sum(e["dur"] for e in runs) / n / 1e3
    return {"ops": ops, "run_ms": run_ms, "between_nodes_ms": run_ms - sum(o["ms"] for o in ops.values())}


def read_trace(path: str | Path) -> list[dict]:
    """The events of a trace file (onnxruntime's `end_profiling` names it)."""
    return json.loads(Path(path).read_text())


def profile_table(profiles: dict[str, dict], top: int = 10) -> list[str]:
    """Markdown rows: the `top` op types by their largest share of a run in any profile, then the
    rest, the time between nodes and the whole run; each profile's ms per step and share of the run."""
    names = list(profiles)
    every_op = {op for p in profiles.values() for op in p["ops"]}
    share = {op: max(p["ops"].get(op, {"ms": 0.0})["ms"] / p["run_ms"] for p in profiles.values()) for op in every_op}
    shown = sorted(share, key=lambda op: (-share[op], op))[:top]  # ties by name: the same table every run

    def cells(p: dict, ms: float, nodes: int | None = None) -> str:
        count = f" ({nodes} nodes)" if nodes else ""
        return f"{ms:.3f}{count} | {100 * ms / p['run_ms']:.0f} %"

    lines = [
        "| op type | " + " | ".join(f"{name} ms per step | share" for name in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for op in shown:
        row = [
            cells(p, p["ops"][op]["ms"], p["ops"][op]["nodes"]) if op in p["ops"] else cells(p, 0.0)
            for p in profiles.values()
        ]
        lines.append(f"| {op} | " + " | ".join(row) + " |")
    rest = [cells(p, sum(v["ms"] for op, v in p["ops"].items() if op not in shown)) for p in profiles.values()]
    lines.append("| every other op type | " + " | ".join(rest) + " |")
    lines.append(
        "| between nodes (the executor) | "
        + " | ".join(cells(p, p["between_nodes_ms"]) for p in profiles.values())
        + " |"
    )
    lines.append("| whole run | " + " | ".join(cells(p, p["run_ms"]) for p in profiles.values()) + " |")
    return lines
