"""Input files shared by the batch-job tests (local and Ray): varied prompts and per-row options."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = "这是很久之前的事情了我们在山上看见一条河流向远方的城市"
BAD_ROWS = {  # id → (the row, a word its error must name)
    "bad-prompt": ({"id": "bad-prompt", "prompt": 42}, "prompt"),
    "bad-top-p": ({"id": "bad-top-p", "prompt": "好", "top_p": 5}, "top_p"),
    "bad-option": ({"id": "bad-option", "prompt": "好", "tempreature": 0.7}, "tempreature"),
    "bad-text": ({"id": "bad-text", "prompt": "好\udcff"}, "UTF-8"),  # a lone surrogate: no UTF-8 text holds it
}


def job_rows(n: int, sampled: bool, bad: bool = False) -> list[dict]:
    """n rows: prompts of 1 to 20 characters; every fifth row sets its own max_new_tokens,
    every seventh its own top_k, every eleventh its own constraint (structured output: a number);
    sampled rows carry their own seed. Odd rows have no id (→ line number)."""
    rows = []
    for i in range(n):
        row = {"prompt": (WORDS * 2)[i % len(WORDS) :][: 1 + i % 20]}
        if i % 2 == 0:
            row["id"] = f"row-{i}"
        if i % 5 == 0:
            row["max_new_tokens"] = 3 + i % 4
        if i % 7 == 0:
            row["top_k"] = 5
        if i % 11 == 3:
            row["constraint"] = {"regex": "[0-9]{1,4}"}
        if sampled:
            row["seed"] = i
        rows.append(row)
    if bad:  # replace rows in the middle
        for k, (row, _) in enumerate(BAD_ROWS.values()):
            rows[100 + 50 * k] = row
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # ASCII: a lone surrogate as \udcff
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_id(rows: list[dict]) -> dict:
    """Output rows keyed by id; fails on a duplicate (each row is written once)."""
    table = {}
    for row in rows:
        assert row["id"] not in table, f"id {row['id']!r} written twice"
        table[row["id"]] = row
    return table
