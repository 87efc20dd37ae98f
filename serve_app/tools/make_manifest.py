"""Build a transcription-job manifest (Parquet) from folders or globs of audio files.

Usage:
    python -m serve_app.tools.make_manifest AUDIO_DIR_OR_GLOB [...] -o manifest.parquet
        [--ext wav,flac,mp3] [--id relpath|stem] [--language en] [--hotwords "a b"]

Each input is a folder (searched recursively for the audio extensions), a glob
(``'calls/**/*.wav'``, quote it) or a single file; ``s3://``/``gs://`` folders and globs
work too (anything ``pyarrow.fs`` opens). Columns: ``id`` (by default the path relative to
its input folder, which is unique; ``--id stem`` uses the file name without extension and
fails on repeats), ``audio`` (absolute path or URI), and ``language`` / ``hotwords`` when
given. Rows are sorted by id so the same inputs always give the same manifest.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import os
import re
import sys
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

DEFAULT_EXTENSIONS = ("wav", "flac", "ogg", "opus", "mp3", "m4a", "mp4", "aac", "webm", "mkv")
_GLOB_CHARS = set("*?[")


def _has_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def _local_files(spec: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(absolute path, id-relative path) pairs for a local folder, glob or file."""
    if _has_glob(spec):
        root = Path(os.path.expanduser(_glob_root(spec)) or ".")
        found = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
        files = [p for p in found if p.is_file()]
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            return [(str(path.resolve()), path.name)]
        if not path.is_dir():
            raise SystemExit(f"error: {spec} is not a folder, glob or file")
        root = path
        files = [p for p in path.rglob("*") if p.is_file() and _wanted(p.name, extensions)]
    root = root.expanduser().resolve()
    out = []
    for p in files:
        p = p.resolve()
        rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
        out.append((str(p), rel))
    return out


def _uri_files(spec: str, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    scheme, rest = spec.split("://", 1)
    pattern = spec if _has_glob(rest) else None
    prefix = _glob_root(rest) if pattern else rest.rstrip("/")
    fs, root = pafs.FileSystem.from_uri(f"{scheme}://{prefix}")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [(spec, info.base_name)]
    out = []
    for item in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if item.type != pafs.FileType.File:
            continue
        rel = item.path[len(root) :].lstrip("/")
        full = f"{scheme}://{prefix}/{rel}"
        if pattern is not None:
            if not fnmatch.fnmatch(full, pattern):
                continue
        elif not _wanted(item.base_name, extensions):
            continue
        out.append((full, rel))
    return out


def _glob_root(text: str) -> str:
    """The folder part of a glob before its first wildcard (``a/b*/c`` -> ``a``)."""
    head = re.split(r"[*?\[]", text, maxsplit=1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def _wanted(name: str, extensions: tuple[str, ...]) -> bool:
    return name.rsplit(".", 1)[-1].lower() in extensions if "." in name else False


def collect(
    inputs: list[str], *, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS, id_mode: str = "relpath"
) -> list[tuple[str, str]]:
    """(id, audio) pairs, sorted by id; raises SystemExit on repeated ids or no files."""
    rows: dict[str, str] = {}
    for spec in inputs:
        found = _uri_files(spec, extensions) if "://" in spec else _local_files(spec, extensions)
        for audio, rel in found:
            file_id = rel if id_mode == "relpath" else PurePosixPath(rel).stem
            if file_id in rows and rows[file_id] != audio:
                raise SystemExit(
                    f"error: id {file_id!r} names both {rows[file_id]} and {audio}; "
                    "use --id relpath or separate inputs"
                )
            rows[file_id] = audio
    if not rows:
        raise SystemExit(f"error: no audio files found in {inputs}")
    return sorted(rows.items())


def write_manifest(
    rows: list[tuple[str, str]],
    output: str | Path,
    *,
    language: str | None = None,
    hotwords: str | None = None,
) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "id": pa.array([r[0] for r in rows], pa.string()),
        "audio": pa.array([r[1] for r in rows], pa.string()),
    }
    if language:
        columns["language"] = pa.array([language] * len(rows), pa.string())
    if hotwords:
        columns["hotwords"] = pa.array([hotwords] * len(rows), pa.string())
    table = pa.table(columns)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="folders, globs or files (local or URI)")
    parser.add_argument("-o", "--output", required=True, help="manifest Parquet file to write")
    parser.add_argument(
        "--ext", default=",".join(DEFAULT_EXTENSIONS), help="extensions searched in folders"
    )
    parser.add_argument("--id", dest="id_mode", choices=("relpath", "stem"), default="relpath")
    parser.add_argument("--language", default=None, help="language column for every row")
    parser.add_argument("--hotwords", default=None, help="space-separated hotwords, every row")
    args = parser.parse_args(argv)
    extensions = tuple(e.strip().lower().lstrip(".") for e in args.ext.split(",") if e.strip())
    rows = collect(args.inputs, extensions=extensions, id_mode=args.id_mode)
    write_manifest(rows, args.output, language=args.language, hotwords=args.hotwords)
    print(f"wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
