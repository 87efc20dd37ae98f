"""The job's input and output on any pyarrow filesystem: the manifest, the output
directory's part files, resuming and retrying error rows (see ``serve_app.batch.job``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from serve_app.batch.rows import OPTIONAL_MANIFEST_COLUMNS, REQUIRED_MANIFEST_COLUMNS, STATUS_OK

logger = logging.getLogger(__name__)

QUARANTINE_DIR = "_quarantine"


SUPERSEDED_DIR = "_superseded"


RETRY_STAGING_PREFIX = "_retry-"


PART_PREFIX = "part-"


class JobInputError(ValueError):
    """The job cannot start: raised before any work, with a message for the user."""


class ManifestError(JobInputError):
    """The manifest cannot be processed at all (missing columns, bad or repeated ids)."""


class OutputDirError(JobInputError):
    """The output directory holds files that are not this job's output."""


def _is_uri(location: str) -> bool:
    return "://" in location


def _absolute(location: str) -> str:
    """Local paths become absolute (workers and ``ray job`` drivers run elsewhere)."""
    if _is_uri(location):
        return location
    return str(Path(location).expanduser().resolve())


def _filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    if _is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), _absolute(location)


@dataclass(frozen=True)
class ManifestInfo:
    location: str
    columns: tuple[str, ...]  # the columns the job reads
    ids: pa.Array  # every id, in manifest order
    base_dir: str | None  # where relative audio paths are resolved


def inspect_manifest(location: str) -> ManifestInfo:
    """Check the schema and read only the ``id`` column; fail fast on bad or repeated ids."""
    location = _absolute(location)
    fs, path = _filesystem(location)
    try:
        dataset = pads.dataset(path, format="parquet", filesystem=fs)
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"cannot read manifest {location}: {exc}") from exc
    names = dataset.schema.names
    missing = [c for c in REQUIRED_MANIFEST_COLUMNS if c not in names]
    if missing:
        raise ManifestError(f"manifest {location} lacks column(s) {missing}; it has {names}")
    ids = dataset.to_table(columns=["id"]).column("id").combine_chunks()
    if not pa.types.is_string(ids.type) and not pa.types.is_large_string(ids.type):
        raise ManifestError(f"manifest column 'id' must be strings, not {ids.type}")
    ids = ids.cast(pa.string())
    if ids.null_count or pc.any(pc.equal(pc.utf8_length(ids.fill_null("")), 0)).as_py():
        raise ManifestError(f"manifest {location} has null or empty ids")
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        shown = ", ".join(f"{v['values']!r} x{v['counts']}" for v in repeated.to_pylist()[:5])
        raise ManifestError(
            f"manifest {location} repeats {len(repeated)} id(s) ({shown}); ids must be unique "
            "so that each gets exactly one output row"
        )
    base_dir = None
    if not _is_uri(location):
        base_dir = location if Path(location).is_dir() else str(Path(location).parent)
    columns = REQUIRED_MANIFEST_COLUMNS + tuple(c for c in OPTIONAL_MANIFEST_COLUMNS if c in names)
    return ManifestInfo(location=location, columns=columns, ids=ids, base_dir=base_dir)


@dataclass
class OutputScan:
    ids: pa.Array  # ids of all readable part files (with repeats, if any)
    files: list[str]
    quarantined: list[str] = field(default_factory=list)


def _part_files(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(
        (
            i
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(("_", "."))
        ),
        key=lambda i: i.path,
    )


def scan_output(location: str) -> OutputScan:
    """Ids already written; unreadable part files are moved to ``_quarantine/``."""
    fs, path = _filesystem(location)
    chunks: list[pa.Array] = [pa.array([], pa.string())]
    files: list[str] = []
    quarantined: list[str] = []
    for info in _part_files(fs, path):
        try:
            schema = pq.read_schema(info.path, filesystem=fs)
            ids = None
            if "id" in schema.names:
                ids = pq.read_table(info.path, columns=["id"], filesystem=fs).column("id")
        except (pa.ArrowInvalid, OSError) as exc:
            # A part file cut short by a killed job has no footer: its rows were never
            # complete, so they are processed again; keep the bytes for inspection.
            target = f"{path}/{QUARANTINE_DIR}/{info.base_name}.corrupt"
            fs.create_dir(f"{path}/{QUARANTINE_DIR}", recursive=True)
            fs.move(info.path, target)
            logger.warning("unreadable part file %s (%s) moved to %s", info.path, exc, target)
            quarantined.append(target)
            continue
        if ids is None:
            raise OutputDirError(
                f"{info.path} has no 'id' column: {location} holds files this job did not "
                "write; use an empty or job-owned output directory"
            )
        chunks.append(ids.combine_chunks().cast(pa.string()))
        files.append(info.path)
    return OutputScan(ids=pa.concat_arrays(chunks), files=files, quarantined=quarantined)


def _run_filenames(run_id: str):
    from ray.data.datasource import FilenameProvider

    class RunFilenames(FilenameProvider):
        """``part-<run>-<write uuid>_<task>.parquet``: this run's files are findable by
        prefix, and a retried write task rewrites its own file instead of adding one."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"{PART_PREFIX}{run_id}-{write_uuid}_{task_index:06}.parquet"

    return RunFilenames()


def _run_rows(fs: pafs.FileSystem, path: str, run_id: str) -> pa.Table:
    columns = ["id", "status", "duration_s", "error"]
    tables = [
        pq.read_table(info.path, columns=columns, filesystem=fs)
        for info in _part_files(fs, path)
        if info.base_name.startswith(f"{PART_PREFIX}{run_id}-")
    ]
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns}).cast(
            pa.schema(
                [
                    ("id", pa.string()),
                    ("status", pa.string()),
                    ("duration_s", pa.float64()),
                    ("error", pa.string()),
                ]
            )
        )
    return pa.concat_tables(tables)


def _verify(manifest_ids: pa.Array, output_ids: pa.Array) -> tuple[int, int, int]:
    """(missing, duplicated, extra) ids of the output against the manifest."""
    counts = pc.value_counts(output_ids)
    duplicated = int(pc.sum(pc.greater(counts.field("counts"), 1)).as_py() or 0)
    unique = counts.field("values")
    missing = int(pc.sum(pc.invert(pc.is_in(manifest_ids, value_set=unique))).as_py() or 0)
    extra = int(pc.sum(pc.invert(pc.is_in(unique, value_set=manifest_ids))).as_py() or 0)
    return missing, duplicated, extra


def error_rows_by_file(
    fs: pafs.FileSystem, files: list[str], manifest_ids: pa.Array
) -> dict[str, pa.Array]:
    """``{part file: ids of its error rows}`` for the manifest ids (files without any left out)."""
    found: dict[str, pa.Array] = {}
    for path in files:
        table = pq.read_table(path, columns=["id", "status"], filesystem=fs)
        is_error = pc.not_equal(table.column("status").fill_null(""), STATUS_OK)
        ids = table.filter(is_error).column("id").combine_chunks().cast(pa.string())
        ids = ids.filter(pc.is_in(ids, value_set=manifest_ids))
        if len(ids):
            found[path] = ids
    return found


def commit_retry(
    fs: pafs.FileSystem,
    out_path: str,
    staging_path: str,
    errors_by_file: dict[str, pa.Array],
    redone_ids: pa.Array,
    run_id: str,
) -> list[str]:
    """Swap the redone rows in: returns the part files moved to ``_superseded/<run>/``.

    Only error rows whose id has a new row in ``staging_path`` are replaced (a block that
    failed this run keeps its old error rows). Order, for crash safety: each old file's
    other rows are written under a hidden name, the old file is moved aside, the new one
    takes a part name; then the staged files move in. A crash can lose rows that the next
    run redoes (ids missing), but never leaves an id twice.
    """
    superseded_dir = f"{out_path}/{SUPERSEDED_DIR}/{run_id}"
    moved: list[str] = []
    for index, (path, error_ids) in enumerate(sorted(errors_by_file.items())):
        drop = error_ids.filter(pc.is_in(error_ids, value_set=redone_ids))
        if not len(drop):
            continue
        table = pq.read_table(path, filesystem=fs)
        is_error = pc.not_equal(table.column("status").fill_null(""), STATUS_OK)
        superseded_row = pc.and_(is_error, pc.is_in(table.column("id"), value_set=drop))
        kept = table.filter(pc.invert(superseded_row))
        fs.create_dir(superseded_dir, recursive=True)
        final = f"{out_path}/{PART_PREFIX}{run_id}-kept_{index:06}.parquet"
        hidden = f"{out_path}/.{PART_PREFIX}{run_id}-kept_{index:06}.parquet.tmp"
        if kept.num_rows:
            pq.write_table(kept, hidden, filesystem=fs)
        target = f"{superseded_dir}/{path.rsplit('/', 1)[-1]}"
        fs.move(path, target)
        moved.append(target)
        if kept.num_rows:
            fs.move(hidden, final)
    for info in _part_files(fs, staging_path):
        fs.move(info.path, f"{out_path}/{info.base_name}")
    fs.delete_dir(staging_path)
    return moved
