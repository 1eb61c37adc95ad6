"""Batch-job files: read input rows lazily, write output rows one whole line at a time.

    INPUT (JSONL | Parquet) ─read_rows─> InputRow(line, id, record | error) ─...─> output dicts
        ─OutputWriter─> OUTPUT: JSONL appended and flushed per row; Parquet through a JSONL
                        journal beside it (`OUTPUT.partial.jsonl`), converted when the job ends

Parquet cannot be appended to, and a file cut off mid-write has no footer, so a Parquet job
writes the journal as it goes: an interrupted run leaves it, and `--resume` reads it.
Memory stays bounded: rows are read in chunks and written as they finish; only the set
of ids seen (for duplicates and `--resume`) grows with the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2_onnx.errors import Gpt2OnnxError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_CHUNK_ROWS = 1024  # rows read or written per Parquet batch
JOURNAL_SUFFIX = ".partial.jsonl"
DEFAULT_MAX_RUNNING = 16  # rows a job decodes together (the engine's KV cache rows)


@dataclass(frozen=True)
class InputRow:
    """One input row: its 1-based line (row) number, its id (the row's `id`, else the line
    number), and its fields, or `error` when the line itself is unusable."""

    line: int
    id: Any
    record: dict[str, Any] | None = None
    error: str | None = None


def file_format(path: Path) -> str:
    """"jsonl" or "parquet", from the file name."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise Gpt2OnnxError(f"{path}: unknown file type {suffix or '(none)'!r}; name it *.jsonl or *.parquet")


def id_key(row_id: Any) -> str:
    """The id as compared for duplicates and `--resume` (1 and "1" are different ids)."""
    return json.dumps(row_id, ensure_ascii=False, sort_keys=True)


def count_rows(path: Path) -> int:
    """Rows in the input (for the progress bar): JSONL non-blank lines, Parquet's metadata."""
    if file_format(path) == "parquet":
        return _parquet(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def read_rows(path: Path) -> Iterator[InputRow]:
    """The input's rows in order, lazily, with duplicate ids turned into error rows."""
    if not path.is_file():
        raise Gpt2OnnxError(f"input file {path} does not exist; pass a JSONL or Parquet file")
    raw = _jsonl_rows(path) if file_format(path) == "jsonl" else _parquet_rows(path)
    seen: set[str] = set()
    for row in raw:
        key = id_key(row.id)
        if key in seen and row.error is None:
            row = InputRow(row.line, row.id, row.record, f"duplicate id {row.id!r}; give every row its own id")
        seen.add(key)
        yield row


def _jsonl_rows(path: Path) -> Iterator[InputRow]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield InputRow(line, line, error=f"not valid JSON ({e.msg} at column {e.colno}); write one object per line")
                continue
            yield _checked(line, record)


def _parquet_rows(path: Path) -> Iterator[InputRow]:
    line = 0
    for batch in _parquet(path).iter_batches(batch_size=PARQUET_CHUNK_ROWS):
        for record in batch.to_pylist():
            line += 1
            # a column absent from a row is a null in Parquet: the same as the key left out
            yield _checked(line, {k: v for k, v in record.items() if v is not None})


def _checked(line: int, record: Any) -> InputRow:
    if not isinstance(record, dict):
        return InputRow(line, line, error=f"a JSON {type(record).__name__}, not an object; write {{\"prompt\": ...}}")
    row_id = record.get("id", line)
    if row_id is None:
        row_id = line
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        return InputRow(line, line, record, f"id must be a string or an integer, got {type(row_id).__name__}")
    return InputRow(line, row_id, record)


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Gpt2OnnxError("Parquet files need pyarrow: pip install 'gpt2-onnx[ray]' (or pip install pyarrow)") from None
    return pq.ParquetFile(path)


# --- output --------------------------------------------------------------------------------


def journal_path(output: Path) -> Path:
    """Where rows go while the job runs: OUTPUT itself for JSONL, a JSONL journal for Parquet."""
    return output if file_format(output) == "jsonl" else output.with_name(output.name + JOURNAL_SUFFIX)


def written_ids(output: Path) -> set[str]:
    """Ids already in OUTPUT (and its journal), for `--resume`. A last line cut off mid-write
    (a crash, not a signal: those end after a whole line) is not counted, and is dropped."""
    done: set[str] = set()
    if file_format(output) == "parquet" and output.is_file():
        done |= {id_key(r["id"]) for b in _parquet(output).iter_batches(columns=["id"]) for r in b.to_pylist()}
    journal = journal_path(output)
    if journal.is_file():
        _drop_partial_line(journal)
        with open(journal, encoding="utf-8") as f:
            done |= {id_key(json.loads(text)["id"]) for text in f if text.strip()}
    return done


def _drop_partial_line(path: Path) -> None:
    with open(path, "rb+") as f:
        data_end = f.seek(0, os.SEEK_END)
        if data_end == 0:
            return
        f.seek(data_end - 1)
        if f.read(1) == b"\n":
            return
        f.seek(max(0, data_end - 2**20))
        tail = f.read()
        f.truncate(data_end - len(tail) + tail.rfind(b"\n") + 1)


class OutputWriter:
    """Appends output rows as whole, flushed lines; `close()` turns a Parquet job's journal
    into OUTPUT (the rows of an earlier, finished Parquet file first)."""

    def __init__(self, output: Path, resume: bool):
        self.output = output
        self.journal = journal_path(output)
        if not resume and (output.exists() or self.journal.exists()):
            raise Gpt2OnnxError(f"{output} already exists; pass --resume to add the missing rows, or choose another OUTPUT")
        self._file = open(self.journal, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self.journal != self.output:
            _journal_to_parquet(self.journal, self.output)

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()  # keep the journal for --resume


def _journal_to_parquet(journal: Path, output: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("text", pa.string()),
                        ("token_ids", pa.list_(pa.int64())), ("finish_reason", pa.string()),
                        ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())])),
                        ("error", pa.string())])
    tmp = output.with_name(output.name + ".tmp")

    def normal(row: dict[str, Any]) -> dict[str, Any]:
        # one schema for every row: ids as text (Parquet columns hold one type), a non-text prompt as None
        row = {name: row.get(name) for name in schema.names}
        return {**row, "id": str(row["id"]), "prompt": row["prompt"] if isinstance(row["prompt"], str) else None}

    with pq.ParquetWriter(tmp, schema) as writer:
        if output.is_file():
            for batch in _parquet(output).iter_batches(batch_size=PARQUET_CHUNK_ROWS):
                writer.write_batch(batch.select(schema.names).cast(schema))
        with open(journal, encoding="utf-8") as f:
            chunk = []
            for text in f:
                chunk.append(normal(json.loads(text)))
                if len(chunk) == PARQUET_CHUNK_ROWS:
                    writer.write_table(pa.Table.from_pylist(chunk, schema))
                    chunk = []
            if chunk:
                writer.write_table(pa.Table.from_pylist(chunk, schema))
    os.replace(tmp, output)
    journal.unlink()
