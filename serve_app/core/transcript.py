"""The stitched result of one request and its OpenAI response formats."""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from serve_app.core.text import has_words, join_texts
from serve_app.core.types import WordTiming


@dataclass(frozen=True)
class TranscriptSegment:
    """One speech segment's text, in the original audio's time."""

    id: int
    start_s: float
    end_s: float
    text: str
    words: tuple[WordTiming, ...] = ()
    # Who said it: the channel's name (channels=split) or the diarized speaker.
    speaker: str | None = None


@dataclass(frozen=True)
class Transcription:
    text: str
    segments: tuple[TranscriptSegment, ...]
    duration_s: float
    model: str
    language: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    # Speaker label -> talk time (s), in label order; empty without speakers.
    speakers: dict[str, float] = field(default_factory=dict)
    # "transcribe", or "translate" (/v1/audio/translations: English text).
    task: str = "transcribe"


def stitch_segments(
    spans_ms: Sequence[tuple[int, int]], results: Sequence[object]
) -> tuple[str, tuple[TranscriptSegment, ...], str | None]:
    """Segment results -> (text, segments in the audio's time, first detected language).

    The one stitching rule of the online service and the offline job. ``spans_ms`` are
    sorted by start; the first failed segment fails the whole file (raised as its typed
    error). Word times are moved from segment time to audio time.
    """
    if len(spans_ms) != len(results):
        raise ValueError(f"{len(results)} results for {len(spans_ms)} segments")
    pieces: list[TranscriptSegment] = []
    language = None
    for (start_ms, end_ms), result in zip(spans_ms, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        offset_s, end_s = start_ms / 1000, end_ms / 1000
        language = language or getattr(result, "language", None)
        words = tuple(
            WordTiming(w.start_s + offset_s, w.end_s + offset_s, w.word)
            for w in getattr(result, "words", ())
        )
        timed = [s for s in getattr(result, "spans", ()) if has_words(s.text)]
        if not timed:
            text = str(getattr(result, "text", "")).strip()
            text = text if has_words(text) else ""
            pieces.append(TranscriptSegment(len(pieces), offset_s, end_s, text, words))
            continue
        bounds = []
        for span in timed:
            start = min(offset_s + max(span.start_s, 0.0), end_s)
            bounds.append((start, min(max(offset_s + span.end_s, start), end_s)))
        # Every word of the item goes to one of its segments: the one whose time holds the
        # word's middle, a word between two segments (aligned a little outside its span's
        # edge, e.g. a span snapped to where the speech starts) to the nearer one.
        cuts = [(stop + nxt) / 2 for (_, stop), (nxt, _) in zip(bounds, bounds[1:])]
        owned: list[list[WordTiming]] = [[] for _ in timed]
        for w in words:
            owned[bisect.bisect_right(cuts, (w.start_s + w.end_s) / 2)].append(w)
        for span, (start, stop), inside in zip(timed, bounds, owned, strict=True):
            pieces.append(
                TranscriptSegment(len(pieces), start, stop, span.text.strip(), tuple(inside))
            )
    return join_texts([p.text for p in pieces]), tuple(pieces), language


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _srt_text(seg: TranscriptSegment) -> str:
    return f"[{seg.speaker}] {seg.text}" if seg.speaker else seg.text


def _vtt_text(seg: TranscriptSegment) -> str:
    """A WebVTT voice span (``<v speaker>text``) when the segment has a speaker."""
    if not seg.speaker:
        return seg.text
    name = seg.speaker.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<v {name}>{seg.text}"


def to_srt(tr: Transcription) -> str:
    blocks = [
        f"{i}\n{_clock(seg.start_s, ',')} --> {_clock(seg.end_s, ',')}\n{_srt_text(seg)}\n"
        for i, seg in enumerate((s for s in tr.segments if s.text), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(tr: Transcription) -> str:
    blocks = [
        f"{_clock(seg.start_s, '.')} --> {_clock(seg.end_s, '.')}\n{_vtt_text(seg)}\n"
        for seg in tr.segments
        if seg.text
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def speaker_text(tr: Transcription) -> str:
    """The text as one ``[speaker] ...`` line per speaker turn (consecutive segments of a
    speaker joined); the plain text when no segment has a speaker."""
    if not any(seg.speaker for seg in tr.segments):
        return tr.text
    turns: list[tuple[str | None, list[str]]] = []
    for seg in tr.segments:
        if not seg.text:
            continue
        if turns and turns[-1][0] == seg.speaker:
            turns[-1][1].append(seg.text)
        else:
            turns.append((seg.speaker, [seg.text]))
    return "\n".join(
        f"[{speaker}] {join_texts(texts)}" if speaker else join_texts(texts)
        for speaker, texts in turns
    )


def _usage(tr: Transcription) -> dict:
    """OpenAI's usage of a model billed by audio duration (whisper-1's): the seconds of
    audio the request sent, silence included."""
    return {"type": "duration", "seconds": round(tr.duration_s, 3)}


def to_verbose_json(tr: Transcription, *, include_words: bool = False) -> dict:
    body: dict = {
        "task": tr.task,
        "language": tr.language or "unknown",
        "duration": round(tr.duration_s, 3),
        "text": tr.text,
        "usage": _usage(tr),
        "segments": [
            {
                "id": seg.id,
                "seek": 0,
                "start": round(seg.start_s, 3),
                "end": round(seg.end_s, 3),
                "text": seg.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
                **({"speaker": seg.speaker} if seg.speaker is not None else {}),
            }
            for seg in tr.segments
        ],
    }
    if tr.speakers:
        body["speakers"] = [
            {"speaker": label, "talk_time_s": round(seconds, 3)}
            for label, seconds in tr.speakers.items()
        ]
    if include_words:
        body["words"] = [
            {"word": w.word, "start": round(w.start_s, 3), "end": round(w.end_s, 3)}
            for seg in tr.segments
            for w in seg.words
        ]
    return body


RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def render(
    tr: Transcription,
    response_format: str,
    *,
    include_words: bool = False,
    speaker_prefixed: bool = False,
):
    """(body, media type) for an OpenAI ``response_format``. ``speaker_prefixed``: the
    ``text`` of json/text is :func:`speaker_text` (``[speaker] ...`` lines)."""
    text = speaker_text(tr) if speaker_prefixed else tr.text
    if response_format == "json":
        body = {"text": text, "usage": _usage(tr)}
        return json.dumps(body, ensure_ascii=False), "application/json"
    if response_format == "text":
        return text, "text/plain; charset=utf-8"
    if response_format == "srt":
        return to_srt(tr), "text/plain; charset=utf-8"
    if response_format == "vtt":
        return to_vtt(tr), "text/vtt; charset=utf-8"
    if response_format == "verbose_json":
        body = to_verbose_json(tr, include_words=include_words)
        return json.dumps(body, ensure_ascii=False), "application/json"
    raise ValueError(response_format)
