"""`gpt2-onnx batch --ray`: the same job as a Ray Data pipeline, one engine per actor.

    INPUT ─read_rows, skip done lines─> staging Parquet (beside OUTPUT, in chunks)
        ─ray.data.read_parquet─> map_batches(GeneratorActor, concurrency=replicas, num_cpus=threads)
        ─iter_batches (streamed to the driver)─> OutputWriter ─> OUTPUT, one whole line per row

Why the driver stages the input instead of handing INPUT to `read_json`: Arrow's JSON reader
gives each column one type, so one row with a numeric prompt would fail the whole read
instead of that row, and it knows no line numbers (a row's default id). Staging runs the
same reader as the local job (`batch_io.read_rows`), so both modes see the same rows, lines,
ids and errors; each actor runs `batch.run_rows`, the local job's loop (and its error rows),
on its batches.

Why the driver writes OUTPUT instead of `write_json`: Ray writes a directory of files, one
per block, none of them complete until its block is; streaming the results into the one
OUTPUT file keeps the local job's contract (whole flushed lines, `--resume` by line, Parquet
through a journal) at bounded memory: Ray Data's streaming executor holds back the
pipeline while the driver writes. On a multi-node cluster, OUTPUT's directory (where the
staging files go) must be on storage every node sees.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gpt2_onnx.errors import Gpt2OnnxError

from .batch import PROMPT_ROWS, Summary, Tally, progress_bar, row_kind, run_rows
from .batch_io import (
    DEFAULT_MAX_RUNNING,
    DEFAULT_RAY_BATCH,
    InputRow,
    OutputWriter,
    count_rows,
    json_line,
    read_rows,
    writing_output,
    written_lines,
)
from .settings import DEFAULT_REPLICAS, ModelSettings

STAGING_SUFFIX = ".ray-staging"
STAGING_ROWS = 4096  # rows per staging file: Ray Data reads a file per task


class GeneratorActor:
    """A Ray Data callable class: one Generator (`model`, loaded as the local job loads it) and one
    engine loop per actor; each batch of staged rows runs through the engine with continuous batching."""

    def __init__(self, model: ModelSettings, job_options: Mapping[str, Any], max_running: int):
        self.generator = model.load()
        self.job_options = dict(job_options)
        self.max_running = max_running

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [
            InputRow(int(line), json.loads(row_id), None if record is None else json.loads(record), error)
            for line, row_id, record, error in zip(batch["line"], batch["id"], batch["record"], batch["error"])
        ]
        outputs = [json_line(out) for out in run_rows(self.generator, rows, self.job_options, self.max_running)]
        return {"output": outputs}


def stage_rows(rows: Iterator[InputRow], staging: Path) -> int:
    """Write the rows to Parquet files under `staging` (STAGING_ROWS a file); returns how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("line", pa.int64()), ("id", pa.string()), ("record", pa.string()), ("error", pa.string())])
    with writing_output(staging):
        staging.mkdir(parents=True)
    count, chunk = 0, []

    def flush() -> None:
        with writing_output(staging):
            pq.write_table(pa.Table.from_pylist(chunk, schema), staging / f"rows-{count:012d}.parquet")

    for row in rows:
        # as JSON text: a row's fields of any type (and any text, a lone surrogate too) fit one string column
        record = None if row.record is None else json_line(row.record)
        chunk.append({"line": row.line, "id": json_line(row.id), "record": record, "error": row.error})
        if len(chunk) == STAGING_ROWS:
            flush()
            count, chunk = count + len(chunk), []
    if chunk:
        flush()
        count += len(chunk)
    return count


def run_ray(
    model: str | None,
    precision: str,
    input_path: Path,
    output_path: Path,
    job_options: Mapping[str, Any],
    address: str | None = None,
    replicas: int = DEFAULT_REPLICAS,
    threads: int | None = None,
    max_running: int = DEFAULT_MAX_RUNNING,
    batch_size: int = DEFAULT_RAY_BATCH,
    resume: bool = False,
    progress: bool = True,
    prefix_cache_mb: float | None = None,
) -> Summary:
    """Run the job of INPUT into OUTPUT on Ray Data with `replicas` engines of `threads` cores
    (None: RAY_THREADS), each loading the model as `ModelSettings` does (`prefix_cache_mb` None:
    on where the precision allows it). Uses the Ray of this process if `ray.init` ran already,
    else joins `address` (None: a new local cluster)."""
    loaded = ModelSettings(model, precision, threads, prefix_cache_mb).on_ray()
    ray = _import_ray()
    input_path, output_path = Path(input_path), Path(output_path)
    _check_options(loaded, job_options)
    rows = read_rows(input_path)  # a missing INPUT, or an unwritable OUTPUT, fails before a cluster starts
    if row_kind(input_path) is not PROMPT_ROWS:
        raise Gpt2OnnxError(
            f"{input_path} is an OpenAI batch file (its first line has custom_id and body): --ray runs prompt rows "
            "only; run it without --ray"
        )
    done = written_lines(output_path) if resume else set()
    staging = output_path.with_name(output_path.name + STAGING_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)  # a staging directory of an interrupted run
    tally = Tally(len(done), PROMPT_ROWS.outcome)
    with OutputWriter(output_path, resume) as writer:
        if not ray.is_initialized():
            # a new local cluster runs no dashboard (nothing listens beyond what the job needs)
            ray.init(address=address, log_to_driver=False, **({} if address else {"include_dashboard": False}))
        try:
            if stage_rows((r for r in rows if r.line not in done), staging):
                bar = progress_bar(count_rows(input_path), len(done), progress)
                for out in _pipeline(ray, staging, loaded, job_options, max_running, replicas, batch_size):
                    writer.write(out)
                    tally.add(out)
                    bar.update(1)
                bar.close()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return tally.summary()


def _pipeline(
    ray, staging: Path, model: ModelSettings, job_options, max_running, replicas, batch_size
) -> Iterator[dict]:
    """The output rows of the staged rows, as Ray Data produces them."""
    # reading a staging file is light: it takes no CPU slot, so the actors may hold every one.
    # Ray Data's V2 file reads list files in a task of one CPU that no argument changes: with
    # every CPU held by an actor it never runs; the V1 read honours ray_remote_args
    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    context.enable_progress_bars = False  # the job's own bar counts rows
    dataset = ray.data.read_parquet(str(staging), ray_remote_args={"num_cpus": 0})
    results = dataset.map_batches(
        GeneratorActor,
        fn_constructor_kwargs={"model": model, "job_options": dict(job_options), "max_running": max_running},
        concurrency=replicas,
        num_cpus=model.threads,
        batch_size=batch_size,
        batch_format="numpy",
    )
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        for text in batch["output"]:
            yield json.loads(text)


def _check_options(model: ModelSettings, job_options: Mapping[str, Any]) -> None:
    """Refuse bad command-line options here, before a cluster starts (the actors would fail on each row)."""
    from gpt2_onnx.generator import prefix_cache_size
    from gpt2_onnx.manifest import read_manifest
    from gpt2_onnx.options import GenerationConfig

    prefix_cache_size(model.precision, model.prefix_cache_mb)
    if model.model is not None and Path(model.model).is_dir():  # a hub id is resolved (and exported) by each actor
        manifest = read_manifest(Path(model.model))
        GenerationConfig.from_options(manifest.generation_defaults, job_options)
        if model.precision not in manifest.variants:
            raise Gpt2OnnxError(
                f"{model.model} has no {model.precision!r} variant; pick one of {', '.join(manifest.variants)}"
            )


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise Gpt2OnnxError("--ray needs the ray extra (ray[data] is missing): pip install 'gpt2-onnx[ray]'") from None
    return ray
