"""Helpers shared by the job's tests (fakes, corpus rows, configs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from serve_app.batch.config import ActorPoolSettings, JobConfig, load_job_config
from serve_app.batch.stages import (
    OUTPUT_SCHEMA,
    DecodeVadStage,
    table_from_rows,
)
from serve_app.config import AudioSettings, VadSettings
from serve_app.core.errors import RecognitionError
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import SegmentTranscript
from tests.speech import SENTENCES

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "ray_configs"
SR = 16_000


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    sf.write(path, samples.astype(np.float32), SR, subtype="PCM_16")
    return path


def _manifest(path: Path, rows: list[dict]) -> Path:
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "audio": pa.array([r["audio"] for r in rows], pa.string()),
            "language": pa.array([r.get("language") for r in rows], pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


class _FakeVad:
    """Speech wherever the signal is loud, in 1 s windows (no model)."""

    def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        out = []
        for start in range(0, len(samples), SR):
            window = samples[start : start + SR]
            if np.abs(window).max(initial=0.0) > 0.05:
                out.append(SpeechSegment(start // 16, (start + len(window)) // 16))
        return out


def _stage(tmp_path: Path, **audio) -> DecodeVadStage:
    return DecodeVadStage(
        AudioSettings(**audio), VadSettings(), base_dir=str(tmp_path), segmenter=_FakeVad()
    )


class _FakeRecognizer:
    """Records every call; a segment whose first sample is -1 fails alone."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def transcribe_batch(self, jobs):
        self.calls.append(list(jobs))
        return [
            RecognitionError("bad segment")
            if job.audio[0] == -1
            else SegmentTranscript(text=f" v{job.audio[0]:g} {job.options.language} ")
            for job in jobs
        ]


def _speech(*values_and_spans):
    return [
        {"start_ms": s, "end_ms": e, "audio": np.full(160, v, np.float32).tobytes()}
        for v, (s, e) in values_and_spans
    ]


def _decoded(row_id, speech=(), status="ok", error=None, language=None):
    return {
        "id": row_id,
        "language": language,
        "hotwords": [],
        "duration_s": 9.0,
        "status": status,
        "error": error,
        "speech": list(speech),
    }


def _items(lengths_ms):
    start, items = 0, []
    for length in lengths_ms:
        items.append({"start_ms": start, "end_ms": start + length})
        start += length + 500
    return items


def _rows(*specs: tuple[str, str]) -> pa.Table:
    return table_from_rows(
        [
            {"id": i, "status": st, "text": "t" if st == "ok" else None, "model": "m"}
            | ({"error": "not_found: x"} if st == "error" else {})
            for i, st in specs
        ],
        OUTPUT_SCHEMA,
    )


GOOD_SENTENCES = SENTENCES[:8]
LONG_SENTENCES = SENTENCES[8:13]


def _test_config() -> JobConfig:
    """batch_cpu.yaml with pools small enough for a 2-core machine shared with Serve tests."""
    base = load_job_config(CONFIG_DIR / "batch_cpu.yaml")
    return base.model_copy(
        update={
            "audio": AudioSettings(max_upload_bytes=50 * 1024 * 1024, max_duration_s=60),
            "decode_vad_pool": ActorPoolSettings(min_size=1, max_size=1, num_cpus=0.5),
            "recognizer_pool": ActorPoolSettings(min_size=1, max_size=1, num_cpus=0.5),
            "files_per_recognizer_batch": 8,
            "part_speech_s": 0.0,
        }
    )


def _ray_workers(title_fragment: str) -> dict[int, str]:
    """``{pid: title}`` of this session's Ray workers whose title holds the fragment.

    Ray titles a worker process ``ray::<actor class>``; Ray Data names its pool actors
    ``MapWorker(MapBatches(<UDF class>))``. Only this process's own descendants are looked
    at (the session cluster's raylet is our child), never another cluster on the host.
    """
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and title_fragment in title:
            found[proc.pid] = title
    return found


def _good_rows(corpus) -> list[dict]:
    return [r for r in corpus["rows"] if corpus["expected"][r["id"]] == "ok"]
