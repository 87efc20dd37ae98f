"""Speakers in the offline job's stages (no Ray): split channels, diarized turns, columns.

Fakes driven by the audio: each talker's samples carry their own amplitude, the fake
VAD finds non-silent stretches, the fake recognizer writes the amplitude into its text
and the fake encoder maps it to a fixed direction, so a wrong label shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import soundfile as sf

from serve_app.batch.stages import OUTPUT_SCHEMA, DecodeVadStage, recognize_rows, table_from_rows
from serve_app.config import AudioSettings, ChannelSettings, SpeakerSettings, VadSettings
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import RecognitionOptions, SegmentTranscript
from serve_app.speakers.base import BatchedEmbedder

SR = 16000


def _level(samples: np.ndarray) -> int:
    loud = samples[np.abs(samples) > 0.01]
    return round(float(np.median(np.abs(loud))) * 10) if len(loud) else 0


class _Vad:
    """Non-silent stretches separated by >= 0.3 s of silence."""

    def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        frames = np.abs(samples[: len(samples) // 160 * 160]).reshape(-1, 160).max(1) > 0.01
        out, start, quiet = [], None, 0
        for i, loud in enumerate(list(frames) + [False] * 30):
            if loud:
                start, quiet = (i if start is None else start), 0
            elif start is not None:
                quiet += 1
                if quiet == 30:
                    out.append(SpeechSegment(start * 10, (i - 29) * 10))
                    start = None
        return out


class _Recognizer:
    def transcribe_batch(self, jobs):
        return [SegmentTranscript(text=f"m{_level(np.asarray(job.audio))}") for job in jobs]


class _Encoder:
    name = "levels"
    embedding_dim = 32

    def embed(self, windows):
        out = []
        for w in windows:
            v = np.random.default_rng(_level(np.asarray(w))).standard_normal(32)
            out.append(v / np.linalg.norm(v))
        return np.array(out, np.float32)

    def warmup(self):
        pass


def _talk(level: float, seconds: float) -> np.ndarray:
    return np.full(round(seconds * SR), level, np.float32) * np.sign(
        np.sin(np.arange(round(seconds * SR)) / SR * 2 * np.pi * 200) + 1e-9
    ).astype(np.float32)


def _quiet(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SR), np.float32)


def test_offline_split_and_diarize_rows(tmp_path: Path):
    left = np.concatenate([_talk(0.2, 3), _quiet(4), _talk(0.2, 2), _quiet(1)])
    right = np.concatenate([_quiet(3.5), _talk(0.4, 3), _quiet(3.5)])
    sf.write(tmp_path / "call.wav", np.stack([left, right], 1), SR, subtype="PCM_16")
    mono = np.concatenate([_talk(0.3, 4), _quiet(1), _talk(0.5, 4), _quiet(1), _talk(0.3, 3)])
    sf.write(tmp_path / "meeting.wav", mono, SR, subtype="PCM_16")
    speakers = SpeakerSettings(warmup=False)
    stage = DecodeVadStage(
        AudioSettings(),
        VadSettings(),
        base_dir=str(tmp_path),
        segmenter=_Vad(),
        channels=ChannelSettings(names=("agent", "customer")),
        speakers=speakers,
        embedder=BatchedEmbedder(_Encoder(), max_forward_audio_s=96, max_batch_items=64),
    )
    manifest = [
        {"id": "call", "audio": "call.wav", "channels": "split", "diarize": None},
        {"id": "meeting", "audio": "meeting.wav", "channels": None, "diarize": "true"},
        {"id": "plain", "audio": "meeting.wav", "channels": None, "diarize": None},
        {"id": "bad", "audio": "meeting.wav", "channels": "stereo", "diarize": None},
    ]
    decoded = stage(pa.Table.from_pylist(manifest))
    out = recognize_rows(
        decoded, _Recognizer(), model_name="m", default_options=RecognitionOptions()
    )
    table = table_from_rows(out, OUTPUT_SCHEMA)  # the written schema holds the new columns
    rows = {r["id"]: r for r in table.to_pylist()}

    call = rows["call"]
    assert [(s["speaker"], s["text"]) for s in call["segments"]] == [
        ("agent", "m2"),
        ("customer", "m4"),
        ("agent", "m2"),
    ]
    assert call["text"] == "m2 m4 m2"
    talk = {s["speaker"]: s["talk_time_s"] for s in call["speakers"]}
    assert talk.keys() == {"agent", "customer"} and abs(talk["agent"] - 5.0) < 0.1

    meeting = rows["meeting"]
    assert [(s["speaker"], s["text"]) for s in meeting["segments"]] == [
        ("speaker_1", "m3"),
        ("speaker_2", "m5"),
        ("speaker_1", "m3"),
    ]
    assert [s["speaker"] for s in meeting["speakers"]] == ["speaker_1", "speaker_2"]

    plain = rows["plain"]
    assert plain["speakers"] is None and all(s["speaker"] is None for s in plain["segments"])
    assert plain["text"] == meeting["text"]
    assert rows["bad"]["status"] == "error" and rows["bad"]["error"].startswith("invalid_request")


def test_diarize_without_speakers_section_is_an_error_row(tmp_path: Path):
    sf.write(tmp_path / "a.wav", _talk(0.3, 2), SR, subtype="PCM_16")
    stage = DecodeVadStage(AudioSettings(), VadSettings(), base_dir=str(tmp_path), segmenter=_Vad())
    row = stage.process({"id": "a", "audio": "a.wav", "diarize": True})
    assert row["status"] == "error" and "diarization is not configured" in row["error"]
