"""Batch jobs: a file of prompts through one engine with continuous batching.

    read_rows ─> skip done lines (--resume) ─> run_rows: at most `max_running` rows in the engine;
        each row: merge_options ─> prepare (encode, config, request) ─> submit | error row
        engine.steps() ... a row finishes ─> result_row ─> OutputWriter (one whole line, flushed)
        a step raises ─> its rows run again one at a time: the one that raises alone ─> error row

Every failure of a row (its line, its options, its length, an exception while it decodes)
is an error row and the job goes on; only the job's own files and options end it.

`run_rows` is the whole loop: `run_local` feeds it the file, and each Ray Data actor feeds
it its batches (apps/ray_data.py), so both modes produce the same rows. The engine is
row-exact and each request has its own random generator, so a row's output does not
depend on which rows ran beside it.

A file holds one kind of line (`RowKind`), chosen by its first line (batch_io.input_kind):
our prompt rows (PROMPT_ROWS, below) or OpenAI's batch requests (OPENAI_LINES, apps/batch_openai.py).
The loop is the same for both; a kind says how a line becomes engine requests and an output row.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gpt2_onnx.engine import Event, Request
from gpt2_onnx.errors import Gpt2OnnxError
from gpt2_onnx.generator import Generator
from gpt2_onnx.option_registry import flag_of

from . import batch_openai
from .batch_io import (
    DEFAULT_MAX_RUNNING,
    LINE,
    OPENAI,
    InputRow,
    OutputWriter,
    count_rows,
    error_message,
    file_format,
    input_kind,
    read_rows,
    written_lines,
)

ROW_FIELDS = ("id", "prompt")  # every other field of a row is a generation option


class Pending(Protocol):
    """A row in the engine: its requests, whether all have finished, and then its output row."""

    requests: list[Request]

    @property
    def done(self) -> bool: ...

    def output(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RowKind:
    """How one kind of input line runs and is answered."""

    # the row's pending requests, not yet submitted; raises naming what is wrong with the row
    start: Callable[[Generator, InputRow, Mapping[str, Any], int], Pending]
    error: Callable[[InputRow, Exception, bool], dict[str, Any]]  # the output row of a row that failed
    outcome: Callable[[Mapping[str, Any]], tuple[bool, int]]  # an output row's (failed, new tokens)


@dataclass(frozen=True)
class Summary:
    """What a job did."""

    written: int  # rows written this run, errors included
    errors: int
    skipped: int  # input lines already answered in OUTPUT (--resume)
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Tally:
    """A job's counts as its rows are written (local and Ray jobs alike)."""

    skipped: int
    outcome: Callable[[Mapping[str, Any]], tuple[bool, int]]  # the rows' kind's
    written: int = 0
    errors: int = 0
    new_tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, out: Mapping[str, Any]) -> None:
        failed, new_tokens = self.outcome(out)
        self.written += 1
        self.errors += failed
        self.new_tokens += new_tokens

    def summary(self) -> Summary:
        return Summary(self.written, self.errors, self.skipped, self.new_tokens, time.perf_counter() - self.start)


def merge_options(job_options: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """The row's options over the job's (command line) ones; a null in the row means "not set"."""
    own = {k: v for k, v in record.items() if k not in ROW_FIELDS and v is not None}
    return {**job_options, **own}


def prepare(generator: Generator, row: InputRow, job_options: Mapping[str, Any], on_event) -> Request:
    """The row's engine request; raises Gpt2OnnxError (or ValueError) naming what is wrong with it."""
    if row.error is not None:
        raise Gpt2OnnxError(row.error)
    prompt = row.record.get("prompt")
    if not isinstance(prompt, str):
        found = "no prompt" if prompt is None else f"a prompt of type {type(prompt).__name__}"
        raise Gpt2OnnxError(f'the row has {found}; give every row a text "prompt"')
    config = generator.config(**merge_options(job_options, row.record))
    if config.num_return_sequences != 1:
        raise Gpt2OnnxError(
            f"num_return_sequences is {config.num_return_sequences}; a batch row holds one sequence: "
            "use 1 and repeat the row with other seeds"
        )
    return generator.request(generator.encode(prompt), config, on_event)


def result_row(
    row: InputRow, text: str, token_ids: list[int], finish_reason: str, prompt_tokens: int
) -> dict[str, Any]:
    """The output row of a finished request: the input's fields, its line and id, and the result."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(token_ids)}
    return {
        **row.record,
        LINE: row.line,
        "id": row.id,
        "text": text,
        "token_ids": token_ids,
        "finish_reason": finish_reason,
        "usage": usage,
    }


def error_row(row: InputRow, error: Exception, while_decoding: bool = False) -> dict[str, Any]:
    """The output row of a row that failed: its fields, line and id, and the error on one line."""
    return {**(row.record or {}), LINE: row.line, "id": row.id, "error": error_message(row, error, while_decoding)}


@dataclass
class _PromptRow:
    """A prompt row in the engine, and what it has produced so far."""

    row: InputRow
    requests: list[Request] = field(default_factory=list)
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def on_event(self, event: Event) -> None:
        self.text += event.text
        self.tokens.extend(event.tokens)
        self.finish_reason = event.finish_reason or self.finish_reason

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def output(self) -> dict[str, Any]:
        return result_row(self.row, self.text, self.tokens, self.finish_reason, len(self.requests[0].prompt_ids))


def _start_prompt_row(generator: Generator, row: InputRow, job_options: Mapping[str, Any], _: int) -> _PromptRow:
    entry = _PromptRow(row)
    entry.requests = [prepare(generator, row, job_options, entry.on_event)]
    return entry


def _prompt_row_outcome(out: Mapping[str, Any]) -> tuple[bool, int]:
    if "error" in out:  # an error row may carry any input field, even one named usage
        return True, 0
    return False, out["usage"]["completion_tokens"]


PROMPT_ROWS = RowKind(_start_prompt_row, error_row, _prompt_row_outcome)
OPENAI_LINES = RowKind(batch_openai.start, batch_openai.error_line, batch_openai.outcome)


def row_kind(input_path: Path) -> RowKind:
    """The kind of the lines of INPUT (its first line decides)."""
    return OPENAI_LINES if input_kind(input_path) == OPENAI else PROMPT_ROWS


def run_rows(
    generator: Generator,
    rows: Iterable[InputRow],
    job_options: Mapping[str, Any],
    max_running: int = DEFAULT_MAX_RUNNING,
    kind: RowKind = PROMPT_ROWS,
) -> Iterator[dict[str, Any]]:
    """Output rows (in the order they finish) of these input rows of one kind, run through one
    engine with at most `max_running` rows in it; a row that fails yields an error row."""
    # rows of the model's whole context (a row of any length joins); a max_running outside [1, MAX_ROWS] is refused
    engine = generator.new_engine(max_running)
    pending = iter(rows)
    retry: deque[InputRow] = deque()  # the rows of a step that raised, to run again one at a time
    running: list[Pending] = []

    def fill() -> Iterator[dict[str, Any]]:
        """Submit rows while there is room (a row to retry runs alone: the step that raises with it
        alone is its own failure); an error row for each that cannot run."""
        while sum(q.rows for r in running for q in r.requests) < max_running and not (retry and running):
            row = retry.popleft() if retry else next(pending, None)
            if row is None:
                return
            try:
                entry = kind.start(generator, row, job_options, max_running)
                for request in entry.requests:  # all checked before any is submitted: a row runs whole or not
                    engine.check(request)
                for request in entry.requests:
                    engine.submit(request)
            except Exception as e:  # whatever a row holds fails that row, not the job
                yield kind.error(row, e, False)
                continue
            running.append(entry)

    while True:
        yield from fill()
        if not running:
            return
        try:
            for _ in engine.steps():  # rows submitted between steps join the next one
                for entry in [r for r in running if r.done]:
                    out = entry.output()  # before it leaves `running`: if this raises, the row is retried too
                    running.remove(entry)
                    yield out
                yield from fill()
        except Exception as e:
            # which row raised is unknown, and the engine's state with it: a new engine, and the
            # rows start over (the engine is row-exact: a row's result does not depend on its neighbours)
            engine = generator.new_engine(max_running)
            if len(running) == 1:
                yield kind.error(running[0].row, e, True)
            else:
                retry.extendleft(reversed([r.row for r in running]))
            running = []


def run_local(
    generator: Generator,
    input_path: Path,
    output_path: Path,
    job_options: Mapping[str, Any],
    max_running: int = DEFAULT_MAX_RUNNING,
    resume: bool = False,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Run the job of INPUT into OUTPUT on this machine. Options and files are checked before
    any row runs (a bad command-line option or file fails the job, with nothing written; a
    bad row fails the row). `on_row` sees each output row after it is written."""
    generator.config(**job_options)
    input_path, output_path = Path(input_path), Path(output_path)
    rows = read_rows(input_path)
    kind = row_kind(input_path)
    if kind is OPENAI_LINES:
        check_openai_job(output_path, job_options)
    done = written_lines(output_path) if resume else set()
    tally = Tally(len(done), kind.outcome)
    with OutputWriter(output_path, resume) as writer:
        bar = progress_bar(count_rows(input_path), len(done), progress)
        pending = (r for r in rows if r.line not in done)
        for out in run_rows(generator, pending, job_options, max_running, kind):
            writer.write(out)
            tally.add(out)
            bar.update(1)
            if on_row is not None:
                on_row(out)
    bar.close()
    return tally.summary()


def check_openai_job(output_path: Path, job_options: Mapping[str, Any]) -> None:
    """An OpenAI batch job writes OpenAI's output lines (JSONL) and reads each line's options from its body alone."""
    if file_format(output_path) != "jsonl":
        raise Gpt2OnnxError(
            f"{output_path}: an OpenAI batch file (its first line has custom_id and body) is answered in OpenAI's "
            "JSONL output format; name OUTPUT *.jsonl"
        )
    if job_options:
        raise Gpt2OnnxError(
            f"option flags ({', '.join(sorted(map(flag_of, job_options)))}) do not apply to an OpenAI batch file: "
            "each line's body sets its options, with the server's defaults; drop the flags"
        )


def progress_bar(total: int, done: int, enabled: bool):
    """A tqdm bar of rows on stderr (or nothing, when disabled or tqdm is missing)."""
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a nicety: the job runs without it
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=total, initial=done, unit="row", desc="gpt2-onnx batch", dynamic_ncols=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
