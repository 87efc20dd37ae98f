"""The job's rows: Arrow schemas, per-row options and errors (no Ray imports).

One row is one file, from the manifest to the output (a long file: one row per part until
the assemble stage, ``serve_app.batch.parts``). Failures are data: a file that cannot be
read, decoded, or is over the limits becomes a row with ``status="error"`` and
``error="<code>: <message>"`` (the typed error's code). Silence is not a failure: it is
``status="ok"`` with empty text and no segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from serve_app.core.errors import AsrError, InternalError
from serve_app.core.pipeline import SpeechItem
from serve_app.core.types import RecognitionOptions

STATUS_OK = "ok"
STATUS_ERROR = "error"

# Manifest columns: ``id`` and ``audio`` are required, the others optional.
REQUIRED_MANIFEST_COLUMNS = ("id", "audio")
OPTIONAL_MANIFEST_COLUMNS = ("language", "hotwords", "diarize", "channels")

SPEECH_TYPE = pa.list_(
    pa.struct(
        [
            ("start_ms", pa.int64()),
            ("end_ms", pa.int64()),
            # float32 samples at 16 kHz; large_binary so a block of long files cannot
            # overflow 32-bit offsets.
            ("audio", pa.large_binary()),
            # The VAD segments this (packed) piece is made of, in the file's time; null
            # for rows written before it existed (the whole piece is then its speech).
            # Used to find speech the decode missed (serve_app.core.coverage).
            ("vad_ms", pa.list_(pa.struct([("start_ms", pa.int64()), ("end_ms", pa.int64())]))),
            # Index of the channel it comes from (channels=split), else 0.
            ("channel", pa.int32()),
        ]
    )
)
# Diarized speaker turns of a file (null when it is not diarized).
TURNS_TYPE = pa.list_(
    pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("speaker", pa.string())])
)
# What DecodeVadStage emits and RecognizeStage consumes (internal to the job).
DECODED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("hotwords", pa.list_(pa.string())),
        ("duration_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("speech", SPEECH_TYPE),
        # channels=split: the name of each channel (segments' speaker); empty otherwise.
        ("channel_names", pa.list_(pa.string())),
        ("turns", TURNS_TYPE),
        # A long file is recognized in parts (``part_speech_s``): this row's part index
        # and the file's number of parts; null: the whole file in one row.
        ("part", pa.int32()),
        ("parts", pa.int32()),
    ]
)
SEGMENTS_TYPE = pa.list_(
    pa.struct(
        [
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("text", pa.string()),
            # The channel's name (channels=split) or the diarized speaker; null otherwise.
            ("speaker", pa.string()),
        ]
    )
)
# Each speaker's label and talk time (s); null for files without speakers.
SPEAKERS_TYPE = pa.list_(pa.struct([("speaker", pa.string()), ("talk_time_s", pa.float64())]))
# The job's output. ``text`` and ``segments`` are null on error rows: an empty string
# means "no speech", never "failed".
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("segments", SEGMENTS_TYPE),
        ("duration_s", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("model", pa.string()),
        ("speakers", SPEAKERS_TYPE),
    ]
)
# What RecognizeStage emits when files are split into parts, and AssembleStage consumes.
PART_OUTPUT_SCHEMA = OUTPUT_SCHEMA.append(pa.field("part", pa.int32())).append(
    pa.field("parts", pa.int32())
)

# Transient storage errors (network, throttling) are retried this often before the file
# becomes an error row.
READ_ATTEMPTS = 3
READ_BACKOFF_S = 1.0


def error_text(exc: BaseException) -> str:
    """``"<code>: <message>"`` for an output row's ``error`` column."""
    if isinstance(exc, AsrError):
        code = exc.code
        # read_audio_bytes reports a missing object as an invalid request; a manifest row
        # pointing nowhere deserves its own code so it can be found and fixed.
        if isinstance(exc.__cause__, FileNotFoundError):
            code = "not_found"
        return f"{code}: {exc.message}"
    if isinstance(exc, FileNotFoundError):
        return f"not_found: {exc}"
    if isinstance(exc, OSError):
        return f"io_error: {type(exc).__name__}: {exc}"
    return f"{InternalError.code}: {type(exc).__name__}: {exc}"


def normalize_hotwords(value: Any) -> list[str]:
    """Manifest hotwords: a space-separated string or a list of strings (or null)."""
    if value is None:
        return []
    items = value.split() if isinstance(value, str) else list(value)
    return [str(w).strip() for w in items if w is not None and str(w).strip()]


def normalize_language(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def resolve_audio_ref(ref: str, base_dir: str | None) -> str:
    """A manifest ``audio`` value as read_audio_bytes expects it.

    URIs pass unchanged; a relative local path is taken relative to the manifest's folder
    (so a manifest and its audio can move together), an absolute one as is.
    """
    if "://" in ref or base_dir is None:
        return ref
    path = Path(ref).expanduser()
    return str(path if path.is_absolute() else Path(base_dir) / path)


def options_for(
    default: RecognitionOptions, language: str | None, hotwords: Sequence[str]
) -> RecognitionOptions:
    """Per-file options over the model's defaults (as the online ingress merges them)."""
    return RecognitionOptions(
        language=language or default.language,
        prompt=default.prompt,
        hotwords=tuple(hotwords) or default.hotwords,
    )


def decoded_error_row(row_id: str, exc: BaseException, duration_s: float | None = None) -> dict:
    return {
        "id": row_id,
        "language": None,
        "hotwords": [],
        "duration_s": duration_s,
        "status": STATUS_ERROR,
        "error": error_text(exc),
        "speech": [],
        "channel_names": [],
        "turns": None,
    }


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def speech_column(items: Sequence[SpeechItem], channel: int = 0) -> list[dict]:
    """A signal's speech items as the ``speech`` column's structs (samples as bytes)."""
    return [
        {
            "start_ms": item.start_ms,
            "end_ms": item.end_ms,
            "audio": np.ascontiguousarray(item.audio, dtype=np.float32).tobytes(),
            "vad_ms": [
                {"start_ms": item.start_ms + a, "end_ms": item.start_ms + b}
                for a, b in (item.vad_ms or ((0, item.end_ms - item.start_ms),))
            ],
            "channel": channel,
        }
        for item in items
    ]


def items_of_row(value: pa.ListScalar, num_signals: int = 1) -> list[list[SpeechItem]]:
    """A row's ``speech`` list -> each signal's speech items (channel by channel with
    ``channels=split``, else all of them), the samples viewing Arrow's buffers."""
    signals: list[list[SpeechItem]] = [[] for _ in range(max(1, num_signals))]
    if not value.is_valid or len(value) == 0:
        return signals
    items = value.values  # StructArray of this row's segments
    names = items.type.names
    starts = items.field("start_ms").to_pylist()
    ends = items.field("end_ms").to_pylist()
    audio = items.field("audio")
    vad = items.field("vad_ms").to_pylist() if "vad_ms" in names else [None] * len(starts)
    channels = items.field("channel").to_pylist() if "channel" in names else [0] * len(starts)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        # Zero-copy: each sample array is a read-only view of the block's buffer.
        samples = np.frombuffer(audio[i].as_buffer(), dtype=np.float32)
        segs = vad[i]
        members = (
            None
            if segs is None
            else tuple((m["start_ms"] - start, m["end_ms"] - start) for m in segs)
        )
        signal = (channels[i] or 0) if num_signals > 1 else 0
        signals[signal].append(SpeechItem(start, end, samples, members))
    return signals
