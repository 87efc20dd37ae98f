"""Offline bulk transcription: a Ray Data job from a Parquet manifest to Parquet results.

Usage (embedded Ray, or against a cluster from ``RAY_ADDRESS`` / ``ray job submit``)::

    python -m serve_app.batch.job --manifest manifest.parquet --output out/ \\
        [--config ray_configs/batch_cpu.yaml]

The manifest has ``id`` (unique string) and ``audio`` (a local path, relative paths being
taken from the manifest's folder, or a URI pyarrow reads: ``file://``, ``s3://``,
``gs://``), optionally ``language``, ``hotwords``, ``channels`` (mix | split) and
``diarize`` (true | false; both default to the job config). The output directory receives
Parquet part files with one row per manifest id: ``id, text, segments, duration_s, status,
error, model, speakers`` (see :data:`serve_app.batch.stages.OUTPUT_SCHEMA`; segments carry
``speaker``, ``speakers`` lists each label with its talk time).

Resuming: before anything runs, the ``id`` column of the part files already in the output
directory is read, and only the manifest ids not there are processed; the new rows are
appended as new part files. Part files that cannot be read (a job killed mid-write) are
moved to ``<output>/_quarantine/`` and their ids processed again. So a killed job is
resumed by running the same command again, and the output ends with exactly one row per id.
One job per output directory at a time.

Failures of the machinery (a recognizer or decode actor's process killed, a node lost) are
not errors of a file: the actor pools restart dead actors and resubmit the batches they held
(``max_restarts`` / ``max_task_retries`` of the pool settings), so the run still ends with
one row per id, without a rerun.

Retrying error rows (``--retry-errors``): the ids whose row is ``status="error"`` are
transcribed again (with any ids still missing) into a staging folder
``<output>/_retry-<run>/``; then every part file holding a superseded error row is rewritten
without it (its other rows go to a new part file) and moved to ``<output>/_superseded/<run>/``,
and the staged files are moved into the output. The output keeps exactly one row per id. A
run killed during that last step can leave ids missing, never repeated: run the same command
again.

The pipeline (streaming, see :mod:`serve_app.batch.stages` for why there is no groupby)::

    manifest rows not done (blocks) -> DecodeVadStage actors -> RecognizeStage actors
        [-> AssembleStage, one actor, with ``part_speech_s``] -> write_parquet (append)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from serve_app.batch.config import JobConfig, load_job_config
from serve_app.batch.io import (
    RETRY_STAGING_PREFIX,
    SUPERSEDED_DIR,
    JobInputError,
    ManifestError,
    ManifestInfo,
    _absolute,
    _filesystem,
    _run_filenames,
    _run_rows,
    _verify,
    commit_retry,
    error_rows_by_file,
    inspect_manifest,
    scan_output,
)
from serve_app.batch.parts import AssembleStage
from serve_app.batch.rows import STATUS_OK
from serve_app.batch.stages import DecodeVadStage, RecognizeStage

logger = logging.getLogger("serve_app.batch.job")

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "ray_configs" / "batch_cpu.yaml"
# Parquet writing is light I/O; it reserves no CPU so it can never wait behind the actor
# pools that hold all of a small cluster's CPUs.
IO_TASK_CPUS = 0
# The assembler of long files' parts joins text: no CPU of its own, for the same reason.
ASSEMBLE_CPUS = 0
MAX_ROWS_PER_MANIFEST_BLOCK = 256
MAX_FAILURES_SHOWN = 10
# Ray Data's own (max_restarts, max_task_retries) for actor pools: restart forever, retry
# every batch of a dead actor.
RAY_DATA_ACTOR_FAULT_TOLERANCE = (-1, -1)


# -- locations ---------------------------------------------------------------------------


# -- manifest ----------------------------------------------------------------------------


# -- output directory: resume state ------------------------------------------------------


# -- the pipeline ------------------------------------------------------------------------


def _pool_args(pool) -> dict:
    import ray.data

    args: dict = {
        "compute": ray.data.ActorPoolStrategy(
            min_size=pool.min_size,
            max_size=pool.max_size,
            max_tasks_in_flight_per_actor=pool.max_tasks_in_flight_per_actor,
        ),
        "num_cpus": pool.num_cpus,
    }
    if pool.num_gpus > 0:
        args["num_gpus"] = pool.num_gpus
    # Actor restart + task retry: a killed actor is recreated and the batches it held run
    # again on its replacement. Ray Data 2.60 already gives pool actors max_restarts=-1 and
    # max_task_retries=-1 (ActorPoolMapOperator._apply_default_remote_args; checked by
    # the tests), and setting them goes through map_batches' **ray_remote_args, deprecated
    # for Ray 2.64: so they are passed only when a config asks for something else.
    if (pool.max_restarts, pool.max_task_retries) != RAY_DATA_ACTOR_FAULT_TOLERANCE:
        args["max_restarts"] = pool.max_restarts
        args["max_task_retries"] = pool.max_task_retries
    return args


def pending_manifest_blocks(
    manifest: ManifestInfo, done_ids: pa.Array, *, rows_per_block: int
) -> list[pa.Table]:
    """The manifest rows whose id is not in ``done_ids``, cut into blocks.

    The manifest is small (paths and ids, not audio), so the driver reads it with pyarrow
    and hands it to Ray Data as blocks of ``rows_per_block`` rows. This is deliberate:
    ``ray.data.read_parquet`` lists files in a task that needs a whole CPU, which never
    runs once the actor pools hold every CPU of a small cluster (a deadlock), and it gives
    one block per row group, which keeps a single decode actor busy.
    """
    fs, path = _filesystem(manifest.location)
    table = pads.dataset(path, format="parquet", filesystem=fs).to_table(
        columns=list(manifest.columns)
    )
    table = table.set_column(0, "id", table.column("id").cast(pa.string()))
    if len(done_ids):
        table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=done_ids)))
    table = table.combine_chunks()
    return [table.slice(i, rows_per_block) for i in range(0, len(table), rows_per_block)]


def _rows_per_manifest_block(config: JobConfig, num_rows: int) -> int:
    # Enough blocks to keep every decode actor fed (Ray Data gives an actor one block per
    # task), but not so many tiny ones that scheduling dominates.
    target_blocks = 4 * config.decode_vad_pool.max_size
    rows = min(MAX_ROWS_PER_MANIFEST_BLOCK, math.ceil(num_rows / target_blocks))
    return max(config.files_per_decode_batch, rows, 1)


def build_pipeline(config: JobConfig, manifest: ManifestInfo, done_ids: pa.Array):
    """The lazy dataset of output rows for the manifest ids not in ``done_ids``."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = config.preserve_order
    ctx.max_errored_blocks = config.max_errored_blocks

    num_pending = len(manifest.ids) - int(
        pc.sum(pc.is_in(manifest.ids, value_set=done_ids)).as_py() or 0
    )
    blocks = pending_manifest_blocks(
        manifest, done_ids, rows_per_block=_rows_per_manifest_block(config, num_pending)
    )
    ds: ray.data.Dataset = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        DecodeVadStage,
        fn_constructor_args=(config.audio, config.vad, config.models_dir),
        fn_constructor_kwargs={
            "base_dir": manifest.base_dir,
            "pack_segments_s": config.recognizer.segment_pack_s,
            "channels": config.channels,
            "speakers": config.speakers,
            "part_speech_s": config.part_speech_s,
        },
        batch_size=config.files_per_decode_batch,
        batch_format="pyarrow",
        **_pool_args(config.decode_vad_pool),
    )
    in_parts = config.part_speech_s > 0
    if in_parts:
        ds = blocks_of_one_call(
            ds, config.files_per_recognizer_batch, max_tasks=config.decode_vad_pool.max_size
        )
    ds = ds.map_batches(
        RecognizeStage,
        fn_constructor_args=(config.recognizer, config.models_dir),
        fn_constructor_kwargs={"keep_parts": in_parts},
        batch_size=config.files_per_recognizer_batch,
        batch_format="pyarrow",
        **_pool_args(config.recognizer_pool),
    )
    if in_parts:
        # ONE actor, so that every part of a file meets in it; it only joins text.
        ds = ds.map_batches(
            AssembleStage,
            batch_size=None,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=ASSEMBLE_CPUS,
        )
    return ds


def blocks_of_one_call(ds, rows_per_call: int, *, max_tasks: int = 1):
    """``ds`` cut into blocks of at most ``rows_per_call`` rows, streaming (no shuffle).

    The decode stage returns a long file's parts as rows of ONE block, and Ray Data hands
    an actor whole blocks (a block is never split between tasks): without this cut every
    part of a 10-minute file ran on one recognizer actor while the others had nothing
    left, which undid the point of the parts (measured: one of two actors idle for the
    last 15 s of a 47 s steady state, docs/BENCHMARKS.md).

    Ray Data gives the repartition's tasks 1 CPU and offers no argument to change it; on
    a cluster whose CPUs the actor pools hold they would never run (the job hangs, tested).
    It only re-slices blocks, so like the writer it reserves none. With no CPU to bound
    them Ray Data then ran 20 such tasks at once, each in a freshly started worker
    process (a 400-block toy pipeline: 19 s; with one task at a time 6 s): so at most
    ``max_tasks`` (one per decode actor, which each produce one block at a time).
    """
    import ray.data
    from ray.data._internal.logical.operators import StreamingRepartition

    ds = ds.repartition(target_num_rows_per_block=rows_per_call)
    op = ds._logical_plan.dag
    if not isinstance(op, StreamingRepartition):  # a Ray upgrade changed the plan
        raise RuntimeError(f"expected a StreamingRepartition, Ray Data planned {op!r}")
    op.ray_remote_args["num_cpus"] = IO_TASK_CPUS
    object.__setattr__(op, "compute", ray.data.TaskPoolStrategy(size=max_tasks))
    return ds


# -- summary -----------------------------------------------------------------------------


@dataclass
class JobSummary:
    manifest_ids: int
    skipped: int  # already in the output before this run
    files: int  # rows written by this run
    ok: int
    failed: int
    audio_s: float  # decoded duration of this run's ok files
    wall_s: float
    output: str
    error_codes: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # first few (id, error)
    missing: int = 0  # manifest ids without an output row after this run
    duplicates: int = 0  # ids with more than one output row
    extra: int = 0  # output ids not in the manifest
    quarantined: list[str] = field(default_factory=list)
    retried: int = 0  # error rows of earlier runs redone (--retry-errors)
    superseded: list[str] = field(default_factory=list)  # part files moved aside

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.duplicates == 0

    def render(self) -> str:
        lines = [
            "== transcription job summary ==",
            f"files       {self.files} this run (ok {self.ok}, failed {self.failed}); "
            f"{self.skipped} already done; manifest {self.manifest_ids}",
            f"audio       {self.audio_s / 3600:.4f} h ({self.audio_s:.1f} s)",
            f"wall        {self.wall_s:.1f} s",
            f"RTFx        {self.rtfx:.2f}",
            f"failures    {self.failed}"
            + (f" {dict(sorted(self.error_codes.items()))}" if self.error_codes else ""),
        ]
        lines += [f"  {fid}: {err}" for fid, err in self.failures]
        if self.failed > len(self.failures):
            lines.append(f"  ... {self.failed - len(self.failures)} more (status = 'error')")
        if self.quarantined:
            lines.append(f"quarantined {len(self.quarantined)} unreadable part file(s)")
        if self.retried or self.superseded:
            lines.append(
                f"retried     {self.retried} earlier error row(s); "
                f"{len(self.superseded)} part file(s) moved to {SUPERSEDED_DIR}/"
            )
        lines.append(
            f"output      {self.output}: missing {self.missing}, duplicates {self.duplicates}, "
            f"not in manifest {self.extra}"
        )
        if self.missing:
            lines.append("              run the same command again to process the missing ids")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rtfx": self.rtfx, "complete": self.complete})


# -- retrying error rows -----------------------------------------------------------------


# -- the job -----------------------------------------------------------------------------


def run_job(
    config: JobConfig,
    *,
    manifest: str | ManifestInfo,
    output: str,
    retry_errors: bool = False,
) -> JobSummary:
    """Process the manifest ids not yet in ``output`` and return the summary.

    With ``retry_errors``, the ids whose row in ``output`` is an ``error`` row are processed
    again too, and their new rows replace the old ones (see the module docstring).

    Needs a connected Ray (``ray.init``). Raises :class:`JobInputError` before any work
    when the manifest or the output directory cannot be used.
    """
    started = time.perf_counter()
    info = manifest if isinstance(manifest, ManifestInfo) else inspect_manifest(manifest)
    output = _absolute(output)
    fs, out_path = _filesystem(output)
    scan = scan_output(output)
    done = pc.unique(scan.ids)
    errors_by_file: dict[str, pa.Array] = {}
    retry_ids = pa.array([], pa.string())
    if retry_errors:
        errors_by_file = error_rows_by_file(fs, scan.files, info.ids)
        if errors_by_file:
            retry_ids = pc.unique(pa.concat_arrays(list(errors_by_file.values())))
            done = done.filter(pc.invert(pc.is_in(done, value_set=retry_ids)))
    skipped = int(pc.sum(pc.is_in(info.ids, value_set=done)).as_py() or 0)
    pending = len(info.ids) - skipped
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    logger.info(
        "manifest %s: %d ids, %d already in %s, %d to process (%d error rows redone; run %s)",
        info.location,
        len(info.ids),
        skipped,
        output,
        pending,
        len(retry_ids),
        run_id,
    )
    # Redone error rows are staged apart until their replacements exist: the output never
    # holds an id twice, even while this run is going.
    target = f"{output}/{RETRY_STAGING_PREFIX}{run_id}" if len(retry_ids) else output
    target_path = f"{out_path}/{RETRY_STAGING_PREFIX}{run_id}" if len(retry_ids) else out_path
    if pending:
        from ray.data import SaveMode

        dataset = build_pipeline(config, info, done)
        dataset.write_parquet(
            target,
            mode=SaveMode.APPEND,
            filename_provider=_run_filenames(run_id),
            min_rows_per_file=config.min_rows_per_output_file,
            ray_remote_args={"num_cpus": IO_TASK_CPUS},
        )
    wall_s = time.perf_counter() - started

    rows = _run_rows(fs, target_path, run_id)
    superseded: list[str] = []
    output_ids = pa.concat_arrays([scan.ids, rows.column("id").combine_chunks()])
    if len(retry_ids):
        superseded = commit_retry(
            fs,
            out_path,
            target_path,
            errors_by_file,
            pc.unique(rows.column("id").combine_chunks()),
            run_id,
        )
        output_ids = scan_output(output).ids
    status = rows.column("status").to_pylist()
    errors = rows.column("error").to_pylist()
    ids = rows.column("id").to_pylist()
    durations = rows.column("duration_s").to_pylist()
    failures = [(i, e) for i, s, e in zip(ids, status, errors, strict=True) if s != STATUS_OK]
    audio_s = sum(d or 0.0 for d, s in zip(durations, status, strict=True) if s == STATUS_OK)
    missing, duplicates, extra = _verify(info.ids, output_ids)
    return JobSummary(
        manifest_ids=len(info.ids),
        skipped=skipped,
        files=len(ids),
        ok=len(ids) - len(failures),
        failed=len(failures),
        audio_s=audio_s,
        wall_s=wall_s,
        output=output,
        error_codes=dict(Counter((e or "").split(":", 1)[0] for _, e in failures)),
        failures=failures[:MAX_FAILURES_SHOWN],
        missing=missing,
        duplicates=duplicates,
        extra=extra,
        quarantined=scan.quarantined,
        retried=len(retry_ids),
        superseded=superseded,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.batch.job",
        description="Transcribe every file of a Parquet manifest with Ray Data (resumable).",
    )
    parser.add_argument("--manifest", required=True, help="Parquet file/folder or URI")
    parser.add_argument("--output", required=True, help="output folder or URI (resumable)")
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="job config YAML (default: %(default)s)"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray address (default: $RAY_ADDRESS, a running local cluster, else embedded)",
    )
    parser.add_argument("--summary-json", default=None, help="also write the summary here")
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="also redo the ids whose output row is an error row, replacing those rows",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    config = load_job_config(args.config)  # validated before Ray starts
    try:
        manifest = inspect_manifest(args.manifest)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray

    ray.init(address=args.address)
    try:
        summary = run_job(
            config, manifest=manifest, output=args.output, retry_errors=args.retry_errors
        )
    except JobInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.render(), flush=True)
    if args.summary_json:
        path = Path(args.summary_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(summary.to_json())
    return 0 if summary.complete else 1


if __name__ == "__main__":
    sys.exit(main())
