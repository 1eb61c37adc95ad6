"""Batch-job files: read input rows lazily, write output rows one whole line at a time.

    INPUT (JSONL | Parquet) ─read_rows─> InputRow(line, id, record | error) ─...─> output dicts
        ─OutputWriter─> OUTPUT: JSONL appended and flushed per row; Parquet through a JSONL
                        journal beside it (`OUTPUT.partial.jsonl`), converted when the job ends

Every output row carries its input `line` (the JSONL line number, or the Parquet row
number): `--resume` skips the lines OUTPUT holds, so a repeated id can never hide a row.
Parquet cannot be appended to, and a file cut off mid-write has no footer, so a Parquet job
writes the journal as it goes: an interrupted run leaves it, and `--resume` reads it.
Memory stays bounded: rows are read in chunks and written as they finish; only the sets
of ids seen (for duplicates) and of lines done (`--resume`) grow with the file.

A row can hold any text (a lone surrogate from `\\udcff` in JSON, or from a byte that is not
UTF-8): `json_line` writes it back escaped, so no row can stop the writer; a file or
stream that fails (missing INPUT, OUTPUT read-only or full) is one Gpt2OnnxError naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2_onnx.errors import Gpt2OnnxError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_CHUNK_ROWS = 1024  # rows read or written per Parquet batch
JOURNAL_SUFFIX = ".partial.jsonl"
# rows a job decodes together (the engine's rows): twice a server's (settings.DEFAULT_MAX_RUNNING), as no
# client waits on a row token by token; only the job's throughput counts, and it grows with the rows of a
# step until the cores are busy (docs/scaling.md)
DEFAULT_MAX_RUNNING = 16
DEFAULT_RAY_BATCH = 64  # rows per Ray Data batch: each actor runs one batch through its engine at a time


@dataclass(frozen=True)
class InputRow:
    """One input row: its 1-based line (row) number, its id (the row's `id`, else the line
    number), and its fields, or `error` when the line itself is unusable."""

    line: int
    id: Any
    record: dict[str, Any] | None = None
    error: str | None = None


def file_format(path: Path) -> str:
    """ "jsonl" or "parquet", from the file name."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise Gpt2OnnxError(f"{path}: unknown file type {suffix or '(none)'!r}; name it *.jsonl or *.parquet")


# the two kinds of batch file: ours (a prompt and options per line) and OpenAI's batch format (a request per line)
ROWS, OPENAI = "rows", "openai"
OPENAI_KEYS = ("custom_id", "body")  # a line with both is an OpenAI batch line


def is_openai_line(record: Any) -> bool:
    """Whether a parsed line is in OpenAI's batch format (it has a custom_id and a body)."""
    return isinstance(record, dict) and all(key in record for key in OPENAI_KEYS)


def input_kind(path: Path) -> str:
    """OPENAI for a JSONL INPUT whose first non-blank line is an OpenAI batch line, ROWS otherwise
    (a Parquet INPUT is always ROWS). Every line must then match its file's kind."""
    if file_format(path) == "parquet" or not path.is_file():
        return ROWS  # a missing INPUT is read_rows' to name
    with reading_input(path), open(path, encoding="utf-8", errors="surrogateescape") as f:
        first = next((text for text in f if text.strip()), "")
    try:
        return OPENAI if is_openai_line(json.loads(first)) else ROWS
    except json.JSONDecodeError:
        return ROWS


def id_key(row_id: Any) -> str:
    """The id as compared for duplicates (1 and "1" are different ids)."""
    return json.dumps(row_id, ensure_ascii=False, sort_keys=True)


def json_line(value: Any) -> str:
    """`value` as one line of JSON that is valid UTF-8, whatever it holds: text as is, a lone
    surrogate (which UTF-8 cannot hold) escaped as JSON's `\\udcff`, a value JSON has no type
    for (a Parquet timestamp, bytes) as its text."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, default=str)  # every character escaped: the same value, read back
    return text


def one_line(message: str) -> str:
    """An error message as one line of valid UTF-8 (a message may quote a row's text)."""
    return _utf8(" ".join(message.split()))


def error_message(row: InputRow, error: Exception, while_decoding: bool = False) -> str:
    """A failed row's error on one line, led by its line. Our errors (and the option checks'
    ValueError, TypeError) name the problem and the fix; anything else is named by its type."""
    if while_decoding:
        message = f"decoding failed: {type(error).__name__}: {error}"
    elif isinstance(error, (Gpt2OnnxError, ValueError, TypeError)):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    return one_line(f"line {row.line}: {message}")


def _utf8(text: str) -> str:
    """`text` with what UTF-8 cannot hold (a lone surrogate) as its escape, `\\udcff`."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@contextmanager
def _io_errors(path: Path, role: str, fix: str) -> Iterator[None]:
    """An OSError on `path` (missing, read-only, full disk...) as one Gpt2OnnxError naming it."""
    try:
        yield
    except OSError as e:
        raise Gpt2OnnxError(f"{role} {path}: {e.strerror or e}; {fix}") from None


def reading_input(path: Path):
    """OSErrors on INPUT as one Gpt2OnnxError."""
    return _io_errors(path, "cannot read INPUT", "pass a readable JSONL or Parquet file")


def writing_output(path: Path):
    """OSErrors on OUTPUT (or a file beside it) as one Gpt2OnnxError."""
    return _io_errors(
        path,
        "cannot write OUTPUT",
        "choose a writable OUTPUT with free space (rows written so far are kept for --resume)",
    )


def count_rows(path: Path) -> int:
    """Rows in the input (for the progress bar): JSONL non-blank lines, Parquet's metadata."""
    with reading_input(path):
        if file_format(path) == "parquet":
            return _parquet(path).metadata.num_rows
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())


def read_rows(path: Path) -> Iterator[InputRow]:
    """The input's rows in order, lazily, with duplicate ids turned into error rows. A missing
    or unreadable INPUT fails here, at the call, before anything is written."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise Gpt2OnnxError(f"input file {path} {problem}; pass a JSONL or Parquet file")
    kind = file_format(path)
    with reading_input(path):
        open(path, "rb").close()
        if kind == "parquet":
            _parquet(path)
    if kind == "parquet":
        return _unique_ids(_parquet_rows(path), "id")
    if input_kind(path) == OPENAI:  # OpenAI requires unique custom_ids
        return _unique_ids(_jsonl_rows(path, _checked_openai), "custom_id")
    return _unique_ids(_jsonl_rows(path, _checked), "id")


def _unique_ids(raw: Iterator[InputRow], name: str) -> Iterator[InputRow]:
    seen: set[str] = set()
    for row in raw:
        key = id_key(row.id)
        if key in seen and row.error is None:
            row = InputRow(row.line, row.id, row.record, f"duplicate {name} {row.id!r}; give every row its own {name}")
        seen.add(key)
        yield row


def _jsonl_rows(path: Path, checked: Callable[[int, Any], InputRow]) -> Iterator[InputRow]:
    # a byte that is not UTF-8 becomes a lone surrogate: its row fails, not the file
    with reading_input(path), open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield InputRow(
                    line, line, error=f"not valid JSON ({e.msg} at column {e.colno}); write one object per line"
                )
                continue
            yield checked(line, record)


def _parquet_rows(path: Path) -> Iterator[InputRow]:
    line = 0
    with reading_input(path):
        for batch in _parquet(path).iter_batches(batch_size=PARQUET_CHUNK_ROWS):
            for record in batch.to_pylist():
                line += 1
                # a column absent from a row is a null in Parquet: the same as the key left out
                yield _checked(line, {k: v for k, v in record.items() if v is not None})


def _checked(line: int, record: Any) -> InputRow:
    if not isinstance(record, dict):
        return InputRow(line, line, error=f'a JSON {type(record).__name__}, not an object; write {{"prompt": ...}}')
    if is_openai_line(record):
        return InputRow(
            line,
            line,
            record,
            "an OpenAI batch line (custom_id, body) in a file whose first line is a prompt row; "
            "write the whole file in one format",
        )
    row_id = record.get("id", line)
    if row_id is None:
        row_id = line
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        return InputRow(line, line, record, f"id must be a string or an integer, got {type(row_id).__name__}")
    return InputRow(line, row_id, record)


def _checked_openai(line: int, record: Any) -> InputRow:
    """A line of an OpenAI batch file: its id is its custom_id (a string, as OpenAI requires)."""
    if not is_openai_line(record):
        if isinstance(record, dict):
            found = "a line with no " + " and no ".join(key for key in OPENAI_KEYS if key not in record)
        else:
            found = f"a JSON {type(record).__name__}"
        return InputRow(
            line,
            line,
            record if isinstance(record, dict) else None,
            f"{found} in an OpenAI batch file (its first line has custom_id and body); "
            'write every line as {"custom_id", "method", "url", "body"}',
        )
    custom_id = record["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        return InputRow(line, line, record, f"custom_id must be a non-empty string, got {json_line(custom_id)}")
    return InputRow(line, custom_id, record)


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise Gpt2OnnxError(
            "Parquet files need pyarrow: pip install 'gpt2-onnx[ray]' (or pip install pyarrow)"
        ) from None
    try:
        return pq.ParquetFile(path)
    except ValueError as e:  # pyarrow's ArrowInvalid: not Parquet (an OSError is its caller's to name)
        raise Gpt2OnnxError(
            f"{path} is not a readable Parquet file ({one_line(str(e))}); check it, or pass another"
        ) from None


# --- output --------------------------------------------------------------------------------

LINE = "line"  # the output field naming the input line a row answers: what --resume compares


def journal_path(output: Path) -> Path:
    """Where rows go while the job runs: OUTPUT itself for JSONL, a JSONL journal for Parquet."""
    return output if file_format(output) == "jsonl" else output.with_name(output.name + JOURNAL_SUFFIX)


def written_lines(output: Path) -> set[int]:
    """Input lines already answered in OUTPUT (and its journal), for `--resume`. A last line
    cut off mid-write (a crash, or kill -9) is not counted, and is dropped."""
    done: set[int] = set()
    journal = journal_path(output)
    with writing_output(output):
        if journal != output and output.is_file():
            finished = _parquet(output)
            if LINE not in finished.schema_arrow.names:
                raise _unkeyed(output, 'has no "line" column')
            done |= {r[LINE] for b in finished.iter_batches(columns=[LINE]) for r in b.to_pylist()}
        if journal.is_file():
            _drop_partial_line(journal)
            with open(journal, encoding="utf-8", errors="replace") as f:
                done |= {_line_of(journal, number, text) for number, text in enumerate(f, start=1) if text.strip()}
    return done


def _line_of(journal: Path, number: int, text: str) -> int:
    try:
        line = json.loads(text).get(LINE)
    except (json.JSONDecodeError, AttributeError):
        line = None
    if isinstance(line, bool) or not isinstance(line, int):
        raise _unkeyed(journal, f'line {number} is no output row with a "line"')
    return line


def _unkeyed(path: Path, problem: str) -> Gpt2OnnxError:
    return Gpt2OnnxError(
        f"{path} {problem} (written by an older gpt2-onnx, or not by a batch job), so --resume "
        "cannot tell which input lines it answers; run the job into a new OUTPUT"
    )


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
    into OUTPUT (the rows of an earlier, finished Parquet file first). OUTPUT is opened at
    once, so an unwritable one fails before any row runs; a job that fails before its first
    row removes the file it created (a rerun is not told to --resume an empty file)."""

    def __init__(self, output: Path, resume: bool):
        self.output = output
        self.journal = journal_path(output)
        if not resume and (output.exists() or self.journal.exists()):
            raise Gpt2OnnxError(
                f"{output} already exists; pass --resume to add the missing rows, or choose another OUTPUT"
            )
        self._created = not self.journal.exists()
        self._rows = 0
        with writing_output(self.journal):
            self._file = open(self.journal, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        with writing_output(self.journal):
            self._file.write(json_line(row) + "\n")
            self._file.flush()
        self._rows += 1

    def close(self) -> None:
        with writing_output(self.journal):
            self._file.close()
        if self.journal != self.output:
            _journal_to_parquet(self.journal, self.output)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
            return
        try:
            self._file.close()  # keep the journal for --resume
        except OSError:  # the rows that failed to flush are lost either way: --resume redoes them
            pass
        if self._created and self._rows == 0:
            self.journal.unlink(missing_ok=True)


RESULT_FIELDS = ("text", "token_ids", "finish_reason", "usage")


def _journal_to_parquet(journal: Path, output: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            (LINE, pa.int64()),
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("text", pa.string()),
            ("token_ids", pa.list_(pa.int64())),
            ("finish_reason", pa.string()),
            ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())])),
            ("error", pa.string()),
        ]
    )
    tmp = output.with_name(output.name + ".tmp")

    def normal(row: dict[str, Any]) -> dict[str, Any]:
        # one schema for every row: ids as text (Parquet columns hold one type), a non-text prompt as
        # None, an error row's input fields never taken for results, text as UTF-8 (a lone surrogate escaped)
        failed = row.get("error") is not None
        row = {name: None if failed and name in RESULT_FIELDS else row.get(name) for name in schema.names}
        row = {**row, "id": str(row["id"]), "prompt": row["prompt"] if isinstance(row["prompt"], str) else None}
        return {name: _utf8(value) if isinstance(value, str) else value for name, value in row.items()}

    try:
        with writing_output(output), pq.ParquetWriter(tmp, schema) as writer:
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
        with writing_output(output):
            os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    journal.unlink()
