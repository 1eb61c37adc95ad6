"""Batch jobs: a file of prompts through one engine with continuous batching.

    read_rows ─> skip done ids (--resume) ─> run_rows: at most `max_running` rows in the engine;
        each row: merge_options ─> prepare (encode, config, request) ─> submit | error row
        engine.steps() ... a row finishes ─> result_row ─> OutputWriter (one whole line, flushed)

`run_rows` is the whole loop: `run_local` feeds it the file, and each Ray Data actor feeds
it its batches (apps/ray_data.py), so both modes produce the same rows. The engine is
row-exact and each request has its own random generator, so a row's output does not
depend on which rows ran beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2_onnx.engine import Engine, Event, Request
from gpt2_onnx.errors import Gpt2OnnxError
from gpt2_onnx.generator import Generator

from .batch_io import DEFAULT_MAX_RUNNING, InputRow, OutputWriter, count_rows, id_key, read_rows, written_ids

ROW_FIELDS = ("id", "prompt")  # every other field of a row is a generation option


@dataclass(frozen=True)
class Summary:
    """What a job did."""

    written: int  # rows written this run, errors included
    errors: int
    skipped: int  # rows already in OUTPUT (--resume)
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


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
        raise Gpt2OnnxError(f"the row has {found}; give every row a text \"prompt\"")
    config = generator.config(**merge_options(job_options, row.record))
    if config.num_return_sequences != 1:
        raise Gpt2OnnxError(f"num_return_sequences is {config.num_return_sequences}; a batch row holds one sequence: "
                            "use 1 and repeat the row with other seeds")
    return generator.request(generator.encode(prompt), config, on_event)


def result_row(row: InputRow, text: str, token_ids: list[int], finish_reason: str, prompt_tokens: int) -> dict[str, Any]:
    """The output row of a finished request: the input's fields, its id, and the result."""
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(token_ids)}
    return {**row.record, "id": row.id, "text": text, "token_ids": token_ids, "finish_reason": finish_reason, "usage": usage}


def error_row(row: InputRow, message: str) -> dict[str, Any]:
    """The output row of a row that could not run: its fields and id, and the one-line error."""
    return {**(row.record or {}), "id": row.id, "error": message}


@dataclass
class _Running:
    """A row in the engine, and what it has produced so far."""

    row: InputRow
    request: Request | None = None
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def on_event(self, event: Event) -> None:
        self.text += event.text
        self.tokens.extend(event.tokens)
        self.finish_reason = event.finish_reason or self.finish_reason


def run_rows(generator: Generator, rows: Iterable[InputRow], job_options: Mapping[str, Any],
             max_running: int = DEFAULT_MAX_RUNNING) -> Iterator[dict[str, Any]]:
    """Output rows (in the order they finish) of these input rows, run through one engine
    with at most `max_running` rows in it; a row that cannot run yields an error row."""
    if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
        raise Gpt2OnnxError(f"max_running must be an integer ≥ 1, got {max_running!r}")
    # the model's whole context per row: rows of any length join without a new engine
    engine = Engine(generator.decoder, generator.codec, max_rows=max_running,
                    capacity=generator.manifest.architecture.n_positions, prefix_cache=generator.prefix_cache)
    pending = iter(rows)
    running: list[_Running] = []

    def fill() -> Iterator[dict[str, Any]]:
        """Submit rows while there is room; an error row for each that cannot run."""
        while sum(r.request.rows for r in running) < max_running and (row := next(pending, None)) is not None:
            entry = _Running(row)
            try:
                entry.request = prepare(generator, row, job_options, entry.on_event)
                engine.submit(entry.request)
            except (Gpt2OnnxError, ValueError, TypeError) as e:
                yield error_row(row, f"line {row.line}: {e}")
                continue
            running.append(entry)

    yield from fill()
    for _ in engine.steps():  # rows submitted between steps join the next one
        for entry in [r for r in running if r.finish_reason is not None]:
            running.remove(entry)
            yield result_row(entry.row, entry.text, entry.tokens, entry.finish_reason, len(entry.request.prompt_ids))
        yield from fill()


def run_local(generator: Generator, input_path: Path, output_path: Path, job_options: Mapping[str, Any],
              max_running: int = DEFAULT_MAX_RUNNING, resume: bool = False, progress: bool = True,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> Summary:
    """Run the job of INPUT into OUTPUT on this machine. Options are checked once before any
    row runs (a bad command-line option fails the job, a bad row option fails the row).
    `on_row` sees each output row after it is written."""
    generator.config(**job_options)
    input_path, output_path = Path(input_path), Path(output_path)
    done = written_ids(output_path) if resume else set()
    rows = (r for r in read_rows(input_path) if id_key(r.id) not in done)
    written = errors = new_tokens = 0
    start = time.perf_counter()
    with OutputWriter(output_path, resume) as writer:
        bar = progress_bar(count_rows(input_path), len(done), progress)
        for out in run_rows(generator, rows, job_options, max_running):
            writer.write(out)
            written += 1
            errors += "error" in out
            new_tokens += out.get("usage", {}).get("completion_tokens", 0)
            bar.update(1)
            if on_row is not None:
                on_row(out)
    bar.close()
    skipped = len(done)
    return Summary(written, errors, skipped, new_tokens, time.perf_counter() - start)


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
