"""The stages of the offline bulk job, as plain classes and functions (no Ray imports).

``serve_app.batch.job`` strings them together with Ray Data::

    manifest rows -> DecodeVadStage (CPU actors) -> RecognizeStage (CPU/GPU actors)
                  [-> AssembleStage (one actor, when long files are split)] -> Parquet

**One row is one file, from the manifest to the output** (a long file: one row per part
until AssembleStage, see below). :class:`DecodeVadStage` reads and
decodes a file, runs the same :class:`~serve_app.vad.detectors.FsmnVad` as the Serve VAD deployment,
and puts the file's speech segments *inside its row* (``speech``: a list of ``start_ms``,
``end_ms`` and the segment's float32 samples as bytes). :class:`RecognizeStage` receives a
batch of such rows, flattens the segments of all its files into one list, runs the same
:class:`~serve_app.recognizers.base.BatchedRecognizer` as the Serve recognizer over all of
them at once (it sorts them by duration and packs forward passes by padded cost, across
files), regroups the results by file and stitches each file's transcript exactly as
:class:`serve_app.core.pipeline.TranscriptionService` does.

Why not one row per segment followed by ``groupby(id)``: a groupby is an all-to-all
exchange. Ray Data cannot emit any group before it has seen every row of the dataset, so
nothing would be written until the last segment of the whole manifest is recognised, all
segment results would be held (or spilled) at once, and a crash would lose everything.
Keeping a file's segments in its row makes every stage a streaming map: memory stays
bounded by the blocks in flight, finished files are written while later ones are still
decoding, and a killed job keeps what it wrote. Padding still stays low because one
recognizer call sees the segments of ``files_per_recognizer_batch`` files (often hundreds
of segments), which is plenty to sort and bucket by duration.

Long files in parts (``part_speech_s``): a file's row holds all its speech, so one 10-minute
file among short ones is one recognizer call on one actor while the others run out of work
(on the 2-core benchmark one of two actors sat idle for most of that call). A file with
more speech than ``part_speech_s`` therefore leaves the decode stage as several rows of
consecutive speech items (cut between VAD pieces, never inside one), which any recognizer
actor can take (the job cuts the decode stage's blocks into blocks of one recognizer call,
``transcribe_job.blocks_of_one_call``: Ray Data never splits a block between tasks, so a
file's parts would otherwise all meet in one actor again); :class:`AssembleStage`, a single
actor, holds the recognized parts (text only) until the file's last part arrives and writes
the file's one row. What a part does alone: re-decoding of missed speech works per item
anyway; punctuation windows and a detected language (a multilingual model and no
``language``) are per part, not per file.
Files with speakers (split channels, diarization) are not split.

Failures are data: a file that cannot be read, decoded, or is over the limits becomes a row
with ``status="error"`` and ``error="<code>: <message>"`` (the typed error's code); it
passes the recognizer stage untouched, and the job goes on. Silence is not a failure: it is
``status="ok"`` with empty text and no segments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from serve_app.batch.speakers import (
    diarize_file,
    label_rows,
    merge_channel_rows,
    row_speaker_request,
    signals_of,
    speakers_column,
    turns_to_row,
)
from serve_app.config import (
    AudioSettings,
    ChannelSettings,
    RecognizerSettings,
    SpeakerSettings,
    VadSettings,
    resolve_models_dir,
)
from serve_app.core.audio import AudioLimits, decode_audio, read_audio_bytes
from serve_app.core.coverage import ItemAudio, Redecoder
from serve_app.core.diarization import DiarizationSettings
from serve_app.core.errors import AsrError, InternalError, InvalidAudioError, InvalidRequestError
from serve_app.core.language import detect_languages_batched
from serve_app.core.segmentation import PackedPiece, SpeechSegment, pack_pieces
from serve_app.core.transcript import join_texts, stitch_segments
from serve_app.core.types import ItemResult, RecognitionOptions, SegmentJob
from serve_app.punctuation.stage import build_punctuator, punctuation_for
from serve_app.speakers.base import BatchedEmbedder

logger = logging.getLogger(__name__)

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


# -- small pure helpers ---------------------------------------------------------------


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


def speech_items(
    samples: np.ndarray, segments: Sequence[SpeechSegment | PackedPiece], channel: int = 0
) -> list[dict]:
    """Segments (or packed pieces with their VAD members) sorted by start, each with its
    float32 samples as bytes."""
    pieces = [s if isinstance(s, PackedPiece) else PackedPiece(s, (s,)) for s in segments]
    pieces.sort(key=lambda p: p.segment.start_ms)
    return [
        {
            "start_ms": p.segment.start_ms,
            "end_ms": p.segment.end_ms,
            "audio": np.ascontiguousarray(p.segment.slice(samples), dtype=np.float32).tobytes(),
            "vad_ms": [{"start_ms": m.start_ms, "end_ms": m.end_ms} for m in p.members],
            "channel": channel,
        }
        for p in pieces
    ]


@dataclass(frozen=True)
class StitchedFile:
    text: str
    segments: list[dict]  # {"start_s", "end_s", "text"} (+ "speaker" with speakers)
    speakers: list[dict] | None = None  # {"speaker", "talk_time_s"}; None: no speakers


def stitch(spans_ms: Sequence[tuple[int, int]], results: Sequence[ItemResult]) -> StitchedFile:
    """One file's segment results -> its transcript, as ``TranscriptionService`` builds it.

    ``spans_ms`` are sorted by start. The first failed segment fails the file (the online
    service fails the request the same way), raised as its typed error.
    """
    text, pieces, _ = stitch_segments(spans_ms, results)
    return StitchedFile(
        text=text,
        segments=[{"start_s": p.start_s, "end_s": p.end_s, "text": p.text} for p in pieces],
    )


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


# -- long files in parts ------------------------------------------------------------------


def split_speech(speech: list[dict], part_speech_s: float) -> list[list[dict]]:
    """A file's speech items (sorted by start) cut into consecutive parts of about
    ``part_speech_s`` seconds of speech each, never inside an item.

    The file's speech is divided into ``ceil(total / part_speech_s)`` equal shares and
    each item goes to the share its midpoint falls in, so the parts are balanced (a
    610 s file gives two of about 305 s, not 600 + 10). ``part_speech_s <= 0``: one part.
    """
    total_ms = sum(item["end_ms"] - item["start_ms"] for item in speech)
    count = math.ceil(total_ms / (part_speech_s * 1000)) if part_speech_s > 0 else 1
    if count <= 1:
        return [speech]
    share_ms = total_ms / count
    parts: list[list[dict]] = [[] for _ in range(count)]
    done_ms = 0
    for item in speech:
        length_ms = item["end_ms"] - item["start_ms"]
        index = min(count - 1, int((done_ms + length_ms / 2) // share_ms))
        parts[index].append(item)
        done_ms += length_ms
    return [part for part in parts if part]


def split_row(row: dict, part_speech_s: float) -> list[dict]:
    """A decoded row -> the rows it is recognized as: itself, or one per part.

    Error rows, files with speakers (split channels, diarized turns: their speakers are
    labelled over the whole file) and files short enough stay whole.
    """
    whole = {**row, "part": None, "parts": None}
    if row["status"] != STATUS_OK or row.get("channel_names") or row.get("turns") is not None:
        return [whole]
    parts = split_speech(row["speech"], part_speech_s)
    if len(parts) <= 1:
        return [whole]
    return [{**row, "speech": part, "part": i, "parts": len(parts)} for i, part in enumerate(parts)]


def merge_parts(parts: Sequence[dict]) -> dict:
    """One file's recognized parts (in part order) -> its output row.

    The transcript is the parts' segments in order and their texts joined as one file's
    segment texts are (:func:`serve_app.core.transcript.join_texts`), so it equals the whole
    file's stitching; the first failed part fails the file, as a failed segment does.
    """
    first = parts[0]
    row = {key: first.get(key) for key in OUTPUT_SCHEMA.names}
    failed = next((p for p in parts if p["status"] != STATUS_OK), None)
    if failed is not None:
        return {
            **row,
            "text": None,
            "segments": None,
            "status": STATUS_ERROR,
            "error": failed["error"],
            "speakers": None,
        }
    segments = [seg for p in parts for seg in (p["segments"] or [])]
    return {**row, "text": join_texts([p["text"] or "" for p in parts]), "segments": segments}


class AssembleStage:
    """Recognized rows -> one output row per file: parts wait here until their file is
    complete. Ray Data runs ONE such actor, so every part of a file meets in it.

    Rows of whole files pass straight through. A part that arrives twice (a recognizer
    call retried after its actor died) is kept once. What waits is text, not audio, and
    only for files whose parts are still being recognized. If this actor dies, the files
    it was holding are missing from the output and the job says so (run it again).
    """

    def __init__(self) -> None:
        self._waiting: dict[str, dict[int, dict]] = {}

    @property
    def waiting_files(self) -> int:
        return len(self._waiting)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return table_from_rows(self.add(batch.to_pylist()), OUTPUT_SCHEMA)

    def add(self, rows: Sequence[dict]) -> list[dict]:
        done = []
        for row in rows:
            count = row.get("parts") or 1
            if count <= 1:
                done.append(row)
                continue
            got = self._waiting.setdefault(row["id"], {})
            got.setdefault(int(row["part"]), row)
            if len(got) == count:
                del self._waiting[row["id"]]
                done.append(merge_parts([got[i] for i in range(count)]))
        return done


# -- stage 1: read + decode + VAD ---------------------------------------------------------


class SegmentsFn(Protocol):
    def segments(self, samples: np.ndarray) -> list[SpeechSegment]: ...


class DecodeVadStage:
    """Manifest rows -> rows with the file's speech segments (one actor holds one VAD).

    Called by Ray Data with a ``pyarrow.Table`` of manifest rows; returns a table in
    :data:`DECODED_SCHEMA`. Never raises for a bad file: it becomes an error row.
    """

    def __init__(
        self,
        audio: AudioSettings,
        vad: VadSettings,
        models_dir: str | None = None,
        *,
        base_dir: str | None = None,
        segmenter: SegmentsFn | None = None,
        pack_segments_s: float = 0.0,
        channels: ChannelSettings | None = None,
        speakers: SpeakerSettings | None = None,
        embedder: BatchedEmbedder | None = None,
        part_speech_s: float = 0.0,
    ) -> None:
        # Files with more speech than this are emitted as several rows (split_row), so
        # that one long file's recognition spreads over the recognizer actors; 0: never.
        self._part_speech_s = part_speech_s
        # Speakers (serve_app.batch.speakers): the channel layout, and the encoder that
        # diarizes files asking for it (loaded on the first such file).
        self._channels = channels or ChannelSettings()
        self._speakers = speakers
        self._embedder = embedder
        self._models_dir = models_dir
        self._limits = AudioLimits(
            max_upload_bytes=audio.max_upload_bytes, max_duration_s=audio.max_duration_s
        )
        self._base_dir = base_dir
        self._pack_ms = round(pack_segments_s * 1000)  # as the online route does
        if segmenter is None:
            from serve_app.vad.detectors import FsmnVad

            vad_model = FsmnVad(vad, models_dir=resolve_models_dir(models_dir))
            vad_model.warmup()  # model load and first run here, once per actor
            segmenter = vad_model
        self._vad = segmenter

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [
            part
            for row in batch.to_pylist()
            for part in split_row(self.process(row), self._part_speech_s)
        ]
        return table_from_rows(rows, DECODED_SCHEMA)

    def process(self, row: dict) -> dict:
        row_id = str(row["id"])
        duration_s = None
        try:
            ref = row.get("audio")
            if not ref or not str(ref).strip():
                raise InvalidRequestError("the manifest row has no audio path", param="audio")
            request = row_speaker_request(row, self._channels, self._speakers)
            data = self._read(resolve_audio_ref(str(ref).strip(), self._base_dir))
            audio = decode_audio(data, self._limits, keep_channels=request.channels == "split")
            del data
            duration_s = audio.duration_s
            if len(audio.samples) == 0:
                raise InvalidAudioError("no samples: the audio is empty")
            signals = signals_of(audio, request, self._channels)
            speech: list[dict] = []
            turns = None
            for channel, samples in enumerate(signals):
                vad_segments = self._vad.segments(samples)
                pieces = pack_pieces(vad_segments, max_piece_ms=self._pack_ms, samples=samples)
                speech += speech_items(samples, pieces, channel)
                if request.diarize and request.channels != "split":
                    turns = turns_to_row(diarize_file(samples, vad_segments, *self._diarizer()))
            split = request.channels == "split"
            return {
                "id": row_id,
                "language": normalize_language(row.get("language")),
                "hotwords": normalize_hotwords(row.get("hotwords")),
                "duration_s": duration_s,
                "status": STATUS_OK,
                "error": None,
                "speech": speech,
                "channel_names": [self._channels.name(i) for i in range(len(signals))]
                if split
                else [],
                "turns": turns,
            }
        except Exception as exc:  # one bad file must not fail its block
            if not isinstance(exc, AsrError):
                logger.warning("file %s failed: %r", row_id, exc)
            return decoded_error_row(row_id, exc, duration_s)

    def _diarizer(self) -> tuple[BatchedEmbedder, DiarizationSettings]:
        assert self._speakers is not None  # row_speaker_request refused the row otherwise
        if self._embedder is None:
            from serve_app.speakers.factory import build_batched_embedder

            self._embedder = build_batched_embedder(
                self._speakers, resolve_models_dir(self._models_dir)
            )
        return self._embedder, self._speakers.diarization_settings()

    def _read(self, uri: str) -> bytes:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return read_audio_bytes(uri, max_bytes=self._limits.max_upload_bytes)
            except AsrError:
                raise  # missing, too large: retrying cannot help
            except OSError as exc:
                if attempt == READ_ATTEMPTS:
                    raise
                logger.warning("reading %s failed (%r); retry %d", uri, exc, attempt)
                time.sleep(READ_BACKOFF_S * attempt)
        raise AssertionError("unreachable")


# -- stage 2: recognize + regroup + stitch ------------------------------------------------


class TranscribeBatchFn(Protocol):
    def transcribe_batch(self, jobs: Sequence[SegmentJob]) -> list[ItemResult]: ...


def _channels_of(value: pa.ListScalar) -> list[int]:
    """Each speech item's channel (0 for rows written before the field existed)."""
    if not value.is_valid or len(value) == 0:
        return []
    items = value.values
    if "channel" not in items.type.names:
        return [0] * len(items)
    return [c or 0 for c in items.field("channel").to_pylist()]


def _speech_of(
    value: pa.ListScalar,
) -> tuple[list[tuple[int, int]], list[np.ndarray], list[tuple[tuple[int, int], ...] | None]]:
    """A row's ``speech`` list -> (spans, samples, VAD members relative to each span's
    start or None), the samples viewing Arrow's buffers."""
    if not value.is_valid or len(value) == 0:
        return [], [], []
    items = value.values  # StructArray of this row's segments
    starts = items.field("start_ms").to_pylist()
    ends = items.field("end_ms").to_pylist()
    audio = items.field("audio")
    # Zero-copy: each sample array is a read-only view of the block's buffer.
    arrays = [np.frombuffer(audio[i].as_buffer(), dtype=np.float32) for i in range(len(audio))]
    members: list[tuple[tuple[int, int], ...] | None] = []
    vad = items.field("vad_ms").to_pylist() if "vad_ms" in items.type.names else None
    for i, start in enumerate(starts):
        segs = vad[i] if vad is not None else None
        members.append(
            None
            if segs is None
            else tuple((m["start_ms"] - start, m["end_ms"] - start) for m in segs)
        )
    return list(zip(starts, ends, strict=True)), arrays, members


def recognize_rows(
    batch: pa.Table,
    recognizer: TranscribeBatchFn,
    *,
    model_name: str,
    default_options: RecognitionOptions,
    redecode_rounds: int = 0,
    punctuator: PunctuateBatchFn | None = None,
    detects_language: bool = False,
) -> list[dict]:
    """Decoded rows -> output rows: every segment of every ok file in ONE transcribe_batch.

    With ``redecode_rounds`` > 0 (packed Whisper items, decoded with timestamps), speech an
    item's decode missed is decoded again as in the online service
    (:class:`serve_app.core.coverage.Redecoder`): all stretches of the block in ONE more
    ``transcribe_batch`` call per round. With ``punctuator`` the stitched files of the
    block are punctuated as in the online service, all files in ONE ``punctuate`` call
    (windows across segment boundaries, packed by tokens). Error rows pass through
    untouched (with the model name added).
    """
    meta = batch.drop_columns(["speech"]).to_pylist()
    speech = batch.column("speech")
    jobs: list[SegmentJob] = []
    items: list[ItemAudio] = []
    # Per row: (slice of jobs, spans, channels); None for rows that already failed.
    layout: list[tuple[slice, list[tuple[int, int]], list[int]] | None] = []
    for i, row in enumerate(meta):
        if row["status"] != STATUS_OK:
            layout.append(None)
            continue
        spans, arrays, members = _speech_of(speech[i])
        opts = options_for(default_options, row["language"], row["hotwords"] or ())
        first = len(jobs)
        jobs.extend(SegmentJob(audio=a, options=opts) for a in arrays)
        items.extend(ItemAudio(a, m) for a, m in zip(arrays, members, strict=True))
        layout.append((slice(first, len(jobs)), spans, _channels_of(speech[i])))

    try:
        probed: dict[int, ItemResult] = {}
        if detects_language and jobs:
            # As online: a file without a language is detected once (serve_app.core.language).
            jobs, probed = _detect_languages(recognizer, jobs, layout)
        todo = [j for j in range(len(jobs)) if j not in probed]
        decoded = iter(recognizer.transcribe_batch([jobs[j] for j in todo]) if todo else [])
        results: list[ItemResult] = [
            probed[j] if j in probed else next(decoded) for j in range(len(jobs))
        ]
        if next(decoded, None) is not None:
            raise RuntimeError(f"recognizer returned more results than {len(todo)} items")
        batch_error: BaseException | None = None
        if redecode_rounds > 0 and jobs:
            results = _redecode(recognizer, jobs, items, results, redecode_rounds)
    except Exception as exc:  # fail these files, not the job
        logger.exception("recognizer failed on a batch of %d segments", len(jobs))
        results, batch_error = [], exc

    out = []
    for row, place in zip(meta, layout, strict=True):
        base = {
            "id": row["id"],
            "duration_s": row["duration_s"],
            "model": model_name,
            # A part of a long file (split_row) says which, for AssembleStage.
            **({"part": row["part"], "parts": row["parts"]} if row.get("parts") else {}),
        }
        if place is None:
            out.append(
                {
                    **base,
                    "text": None,
                    "segments": None,
                    "status": STATUS_ERROR,
                    "error": row["error"],
                }
            )
            continue
        where, spans, channels = place
        try:
            if batch_error is not None:
                raise batch_error
            stitched = _stitch_row(row, spans, channels, results[where])
        except Exception as exc:  # recorded per file
            out.append(
                {
                    **base,
                    "text": None,
                    "segments": None,
                    "status": STATUS_ERROR,
                    "error": error_text(exc),
                }
            )
            continue
        out.append(
            {
                **base,
                "text": stitched.text,
                "segments": stitched.segments,
                "status": STATUS_OK,
                "error": None,
                # Only files with speakers carry them (segments' "speaker" too).
                **({"speakers": stitched.speakers} if stitched.speakers is not None else {}),
            }
        )
    if punctuator is not None:
        _punctuate_rows(out, punctuator)
    return out


def _stitch_row(
    row: dict, spans: list[tuple[int, int]], channels: list[int], results: Sequence[ItemResult]
) -> StitchedFile:
    """One file: stitched alone, per channel (split, labelled and merged by start), or
    labelled with its diarized turns, as the online request is."""
    names = row.get("channel_names") or []
    if names:
        per_channel = []
        for index, name in enumerate(names):
            mine = [i for i, c in enumerate(channels) if c == index]
            part = stitch([spans[i] for i in mine], [results[i] for i in mine])
            per_channel.append((name, part.segments))
        segments = merge_channel_rows(per_channel)
        text = join_texts([seg["text"] for seg in segments])
        return StitchedFile(text, segments, speakers_column(segments, names))
    stitched = stitch(spans, results)
    turns = row.get("turns")
    if turns is None:
        return stitched
    segments = label_rows(stitched.segments, turns)
    order = list(dict.fromkeys(t["speaker"] for t in sorted(turns, key=lambda t: t["start_s"])))
    order.sort(key=lambda x: (len(x), x))
    return StitchedFile(stitched.text, segments, speakers_column(segments, order))


class PunctuateBatchFn(Protocol):
    def punctuate(self, requests: Sequence[Sequence[str]]) -> list[list[str] | AsrError]: ...


def _punctuate_rows(rows: list[dict], punctuator: PunctuateBatchFn) -> None:
    """Punctuate every ok row with text in place (segment texts and the joined text); a
    file whose punctuation failed becomes an error row, as its request would fail online."""
    todo = [row for row in rows if row["status"] == STATUS_OK and (row["text"] or "").strip()]
    if not todo:
        return
    results = punctuator.punctuate([[seg["text"] for seg in row["segments"]] for row in todo])
    for row, result in zip(todo, results, strict=True):
        if isinstance(result, AsrError):
            row.update(text=None, segments=None, status=STATUS_ERROR, error=error_text(result))
            continue
        segments = [{**seg, "text": text} for seg, text in zip(row["segments"], result)]
        row.update(text=join_texts(result), segments=segments)


def _detect_languages(
    recognizer: TranscribeBatchFn,
    jobs: list[SegmentJob],
    layout: Sequence[tuple[Any, ...] | None],
) -> tuple[list[SegmentJob], dict[int, ItemResult]]:
    """Every file's jobs with its detected language, and the probe results to keep (by
    job index): the block's first items in one batch (serve_app.core.language)."""
    places = [place[0] for place in layout if place is not None and place[0].stop > place[0].start]
    requests = [
        (jobs[w.start].options, [jobs[j].audio for j in range(w.start, w.stop)]) for w in places
    ]
    decided = detect_languages_batched(recognizer.transcribe_batch, requests)
    jobs = list(jobs)
    probed: dict[int, ItemResult] = {}
    for where, (options, kept) in zip(places, decided, strict=True):
        for j in range(where.start, where.stop):
            jobs[j] = dataclasses.replace(jobs[j], options=options)
        probed.update({where.start + k: result for k, result in kept.items()})
    return jobs, probed


def _redecode(
    recognizer: TranscribeBatchFn,
    jobs: Sequence[SegmentJob],
    items: Sequence[ItemAudio],
    results: Sequence[ItemResult],
    max_rounds: int,
) -> list[ItemResult]:
    """The re-decode rounds of one block (the online service runs the same Redecoder)."""
    redecoder = Redecoder(items, results, max_rounds=max_rounds)
    while pending := redecoder.pending():
        redecoder.accept(
            recognizer.transcribe_batch(
                [SegmentJob(audio=p.audio, options=jobs[p.item].options) for p in pending]
            )
        )
    if redecoder.redecodes or redecoder.retimed:
        logger.info(
            "re-decoded %d stretches (%s), re-timed %d items, in %d rounds",
            sum(redecoder.redecodes.values()),
            dict(redecoder.redecodes),
            sum(redecoder.retimed.values()),
            redecoder.rounds_done,
        )
    return redecoder.results()  # type: ignore[return-value]


class RecognizeStage:
    """Decoded rows -> output rows; one actor loads (and warms) one recognizer, once."""

    def __init__(
        self,
        settings: RecognizerSettings,
        models_dir: str | None = None,
        *,
        recognizer: TranscribeBatchFn | None = None,
        punctuator: PunctuateBatchFn | None = None,
        keep_parts: bool = False,
    ) -> None:
        # With files in parts, rows keep their part index for AssembleStage.
        self._schema = PART_OUTPUT_SCHEMA if keep_parts else OUTPUT_SCHEMA
        # The recognizer's punctuation stage, the same plain object the online deployment
        # runs (none for models that punctuate themselves; see serve_app.punctuation.stage).
        if punctuator is None and (
            punctuation := punctuation_for(settings, resolve_models_dir(models_dir))
        ):
            punctuator = build_punctuator(punctuation, resolve_models_dir(models_dir))
        self._punctuator = punctuator
        if recognizer is None:
            from serve_app.recognizers.factory import build_recognizer

            recognizer = build_recognizer(settings, resolve_models_dir(models_dir))
        self._recognizer = recognizer
        # As online: a file without a language is detected once (serve_app.core.language).
        capabilities = getattr(recognizer, "capabilities", None)
        self._detects_language = bool(
            capabilities is not None and capabilities().language_detection
        )
        self._model_name = settings.name
        # As the online route: packed (timestamped) items are checked and re-decoded.
        self._redecode_rounds = 2 if settings.segment_pack_s > 0 else 0
        self._default_options = RecognitionOptions(
            language=settings.language, hotwords=settings.hotwords
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = recognize_rows(
            batch,
            self._recognizer,
            model_name=self._model_name,
            default_options=self._default_options,
            redecode_rounds=self._redecode_rounds,
            punctuator=self._punctuator,
            detects_language=self._detects_language,
        )
        stats = getattr(self._recognizer, "last_stats", None)
        if stats is not None and stats.num_items:
            logger.debug(
                "%d files, %d segments, %d forward passes, padding efficiency %.2f",
                batch.num_rows,
                stats.num_items,
                stats.num_forward_passes,
                stats.padding_efficiency,
            )
        return table_from_rows(rows, self._schema)
