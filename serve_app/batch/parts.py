"""Long files in parts (``part_speech_s``).

A file's row holds all its speech, so one 10-minute file among short ones would be one
recognizer call on one actor while the others run out of work. A file with more speech
than ``part_speech_s`` therefore leaves the decode stage as several rows of consecutive
speech items (cut between VAD pieces, never inside one), which any recognizer actor can
take (the job cuts the decode stage's blocks into blocks of one recognizer call,
``serve_app.batch.job.blocks_of_one_call``: Ray Data never splits a block between tasks,
so a file's parts would otherwise all meet in one actor again); :class:`AssembleStage`, a
single actor, holds the recognized parts (text only) until the file's last part arrives
and writes the file's one row. What a part does alone: re-decoding of missed speech works
per item anyway; punctuation windows and a detected language (a multilingual model and no
``language``) are per part, not per file. Files with speakers (split channels,
diarization) are not split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa

from serve_app.batch.rows import OUTPUT_SCHEMA, STATUS_ERROR, STATUS_OK, table_from_rows
from serve_app.core.text import join_texts


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
