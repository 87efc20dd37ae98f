"""Speakers in the offline job: per-row options, diarization in the decode actor, labels.

The job's rows carry what the online request path computes per request:

- ``channels`` (manifest column, else ``channels.default`` of the job config): with
  ``split`` every channel's VAD segments are speech items of their own (``channel`` = the
  channel's index) and the recognize stage stitches each channel alone, labels its
  segments with the channel's name and merges them by start time.
- ``diarize`` (manifest column, else ``speakers.diarize_by_default``): the decode actor
  embeds windows inside the file's VAD segments (one :class:`BatchedEmbedder` call per
  file) and clusters them; the speaker turns travel in the row (``turns``) and the
  recognize stage assigns them to the stitched segments as online.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from serve_app.config import ChannelSettings, SpeakerSettings
from serve_app.core.audio import DecodedAudio
from serve_app.core.diarization import (
    Diarization,
    DiarizationSettings,
    SpeakerTurn,
    embedding_windows,
    speech_spans_s,
    turns_from_embeddings,
    window_audio,
)
from serve_app.core.errors import AsrError, InvalidRequestError
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.speaker_request import (
    SpeakerRequest,
    label_segments,
    merge_channels,
    talk_time_s,
)
from serve_app.core.transcript import TranscriptSegment
from serve_app.core.types import EmbeddingJob
from serve_app.online.forms import CHANNEL_MODES
from serve_app.speakers.base import BatchedEmbedder

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def row_speaker_request(
    row: dict, channels: ChannelSettings, speakers: SpeakerSettings | None
) -> SpeakerRequest:
    """A manifest row's ``channels`` / ``diarize`` over the job's defaults (400 on bad
    values, or when diarization is asked of a job without a ``speakers`` section)."""
    mode = str(row.get("channels") or "").strip() or channels.default
    if mode not in CHANNEL_MODES:
        raise InvalidRequestError(
            f"channels must be one of {list(CHANNEL_MODES)}, got {mode!r}", param="channels"
        )
    value: Any = row.get("diarize")
    if value is None or (isinstance(value, str) and not value.strip()):
        diarize = bool(speakers and speakers.diarize_by_default)
    elif isinstance(value, bool):
        diarize = value
    elif str(value).strip().lower() in _TRUE + _FALSE:
        diarize = str(value).strip().lower() in _TRUE
    else:
        raise InvalidRequestError(f"diarize must be true or false, got {value!r}", param="diarize")
    if diarize and speakers is None and mode != "split":
        raise InvalidRequestError(
            "diarization is not configured for this job (no 'speakers' section)", param="diarize"
        )
    return SpeakerRequest(channels="split" if mode == "split" else "mix", diarize=diarize)


def signals_of(
    audio: DecodedAudio, request: SpeakerRequest, channels: ChannelSettings
) -> list[np.ndarray]:
    """The signals to VAD and recognize: each channel (split) or the mix."""
    if request.channels != "split" or not audio.channels:
        return [audio.samples]
    if len(audio.channels) > channels.max_channels:
        raise InvalidRequestError(
            f"channels=split takes at most {channels.max_channels} channels, "
            f"the file has {len(audio.channels)}",
            param="channels",
        )
    return list(audio.channels)


def diarize_file(
    samples: np.ndarray,
    vad_segments: Sequence[SpeechSegment],
    embedder: BatchedEmbedder,
    settings: DiarizationSettings,
) -> Diarization:
    """One file's speaker turns: every window of the file in ONE ``embed_batch`` call."""
    spans_s = speech_spans_s(samples, [(s.start_ms, s.end_ms) for s in vad_segments])
    windows = embedding_windows(spans_s, window_s=settings.window_s, hop_s=settings.hop_s)
    if not windows:
        return Diarization(turns=())
    results = embedder.embed_batch([EmbeddingJob(a) for a in window_audio(samples, windows)])
    errors = [r for r in results if isinstance(r, AsrError)]
    if errors:
        raise errors[0]
    matrix = np.stack([np.asarray(r) for r in results])
    return turns_from_embeddings(windows, matrix, spans_s, settings=settings)


def turns_to_row(diarization: Diarization | None) -> list[dict] | None:
    if diarization is None:
        return None
    return [
        {"start_s": t.start_s, "end_s": t.end_s, "speaker": t.speaker} for t in diarization.turns
    ]


def _segments(rows: Sequence[dict]) -> list[TranscriptSegment]:
    return [
        TranscriptSegment(i, r["start_s"], r["end_s"], r["text"], speaker=r.get("speaker"))
        for i, r in enumerate(rows)
    ]


def _rows(segments: Sequence[TranscriptSegment]) -> list[dict]:
    return [
        {"start_s": s.start_s, "end_s": s.end_s, "text": s.text, "speaker": s.speaker}
        for s in segments
    ]


def merge_channel_rows(per_channel: Sequence[tuple[str, Sequence[dict]]]) -> list[dict]:
    """Stitched segment dicts of each channel -> one list labelled and merged by start."""
    return _rows(merge_channels([(name, _segments(rows)) for name, rows in per_channel]))


def label_rows(segments: Sequence[dict], turns: Sequence[dict]) -> list[dict]:
    """Stitched segment dicts -> with ``speaker`` from the row's turns (split at changes)."""
    diarization = Diarization(
        turns=tuple(SpeakerTurn(t["start_s"], t["end_s"], t["speaker"]) for t in turns)
    )
    return _rows(label_segments(_segments(segments), diarization))


def speakers_column(segments: Sequence[dict], order: Sequence[str] = ()) -> list[dict] | None:
    """The ``speakers`` column: each label with its talk time; null without speakers."""
    labelled = _segments(segments)
    if not any(s.speaker for s in labelled) and not order:
        return None
    names = list(order) or sorted(
        {s.speaker for s in labelled if s.speaker}, key=lambda x: (len(x), x)
    )
    totals = talk_time_s(labelled, names)
    return [{"speaker": k, "talk_time_s": v} for k, v in totals.items()]
