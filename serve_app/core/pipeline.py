"""Request-level transcription logic with injected stages (no Ray, no HTTP).

``TranscriptionService`` decodes once, asks the VAD for segments, sends every segment as
its own item to the recognizer (so segments of many requests meet in one dynamic batch),
and stitches the results back in order with timestamps in the original audio's time. The
stages are plain async callables: the Serve ingress passes deployment handles, the unit
tests pass fakes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from serve_app.config import ChannelSettings
from serve_app.core import observability
from serve_app.core.audio import AudioLimits, DecodedAudio, decode_audio
from serve_app.core.coverage import ItemAudio, Redecoder
from serve_app.core.diarization import (
    Diarization,
    DiarizationOptions,
    DiarizationSettings,
    speech_spans_s,
)
from serve_app.core.errors import AsrError, InvalidRequestError, UnknownModelError
from serve_app.core.language import PROBE_ITEMS, DetectsFn, detect_request_language
from serve_app.core.punctuate import PunctuateFn, punctuate_stitched
from serve_app.core.segmentation import PackedPiece, SpeechSegment, pack_pieces
from serve_app.core.speaker_request import (
    EmbedFn,
    SpeakerRequest,
    diarize_signal,
    label_segments,
    merge_channels,
    talk_time_s,
)
from serve_app.core.transcript import (
    Transcription,
    TranscriptSegment,
    join_texts,
    stitch_segments,
)
from serve_app.core.types import RecognitionOptions, SegmentJob, SegmentTranscript

SegmentFn = Callable[[np.ndarray], Awaitable[list[SpeechSegment]]]
RecognizeFn = Callable[[SegmentJob], Awaitable[SegmentTranscript]]


@dataclass(frozen=True)
class ModelRoute:
    name: str
    recognize: RecognizeFn
    default_options: RecognitionOptions = field(default_factory=RecognitionOptions)
    # Join consecutive segments into pieces up to this long (0: keep the VAD's segments).
    pack_segments_ms: int = 0
    # Re-decode rounds for speech a packed item's decode did not account for (see
    # serve_app.core.coverage); only with packing, whose items are decoded with timestamps.
    redecode_rounds: int = 2
    # The punctuation stage after stitching (serve_app/punctuation/); None: none.
    punctuate: PunctuateFn | None = None
    # Whether the model detects the language itself (asked once, then cached by the
    # caller): then a request without a language is detected once (serve_app.core.language).
    detects_language: DetectsFn | None = None


class TranscriptionService:
    """Decode -> VAD -> per-segment recognition -> stitched :class:`Transcription`."""

    def __init__(
        self,
        *,
        segment: SegmentFn,
        routes: Mapping[str, ModelRoute],
        default_model: str,
        limits: AudioLimits,
        embed: EmbedFn | None = None,
        diarization_settings: DiarizationSettings | None = None,
        channels: ChannelSettings | None = None,
    ) -> None:
        self._segment = segment
        self._routes = dict(routes)
        self._default_model = default_model
        self._limits = limits
        # The speaker stage (one call per embedding window); None: diarization is a 400.
        self._embed = embed
        self._diarization_settings = diarization_settings or DiarizationSettings()
        self._channels = channels or ChannelSettings()

    @property
    def can_diarize(self) -> bool:
        return self._embed is not None

    def route(self, model: str | None) -> ModelRoute:
        name = model or self._default_model
        try:
            return self._routes[name]
        except KeyError:
            raise UnknownModelError(
                f"model {name!r} is not served; available: {sorted(self._routes)}", param="model"
            ) from None

    async def decode(self, data: bytes, *, keep_channels: bool = False) -> DecodedAudio:
        # Decoding is CPU work: keep it off the event loop that serves other requests.
        return await asyncio.to_thread(
            functools.partial(decode_audio, keep_channels=keep_channels), data, self._limits
        )

    async def transcribe(
        self,
        audio: DecodedAudio,
        *,
        model: str | None,
        options: RecognitionOptions | None = None,
        deadline_unix_s: float | None = None,
        request_id: str | None = None,
        speakers: SpeakerRequest | None = None,
        on_segment: SegmentCallback | None = None,
    ) -> Transcription:
        """Transcribe decoded audio. Every segment job carries ``deadline_unix_s`` and
        ``request_id`` so downstream stages can drop work of requests that gave up.

        ``on_segment`` (streaming) is awaited with each recognized item in audio order, as
        soon as it and every earlier one are done (one signal only: with ``channels=split``
        nothing is reported before the end). What this returns does not change.

        ``speakers``: ``channels="split"`` recognizes each channel of ``audio`` (decoded
        with ``keep_channels``) on its own, all at once, and labels segments with the
        channel's name; ``diarize`` (one signal) labels them with diarized speakers."""
        route = self.route(model)
        opts = _merge(route.default_options, options)
        speakers = speakers or SpeakerRequest()
        timings: dict[str, float] = {}
        signals = [audio.samples]
        if speakers.channels == "split" and audio.channels:
            if len(audio.channels) > self._channels.max_channels:
                raise InvalidRequestError(
                    f"channels=split takes at most {self._channels.max_channels} channels, "
                    f"the file has {len(audio.channels)}",
                    param="channels",
                )
            signals = list(audio.channels)
        diarize = (
            speakers.diarization if speakers.diarize and speakers.channels != "split" else None
        )
        if diarize is not None and self._embed is None:
            raise InvalidRequestError(
                "diarization is not configured on this server", param="diarize"
            )
        outcomes = await asyncio.gather(
            *(
                self._transcribe_signal(
                    samples,
                    route,
                    opts,
                    timings,
                    deadline_unix_s,
                    request_id,
                    diarize,
                    on_segment if len(signals) == 1 else None,
                )
                for samples in signals
            )
        )
        language = next((o.language for o in outcomes if o.language), None)
        talk_time: dict[str, float] = {}
        if speakers.channels == "split":
            names = [self._channels.name(i) for i in range(len(signals))]
            pieces = merge_channels([(n, o.segments) for n, o in zip(names, outcomes)])
            text = join_texts([p.text for p in pieces])
            talk_time = talk_time_s(pieces, names)
        else:
            text, pieces = outcomes[0].text, outcomes[0].segments
            if outcomes[0].diarization is not None:
                pieces = label_segments(pieces, outcomes[0].diarization)
                talk_time = outcomes[0].diarization.talk_time_s
        return Transcription(
            text=text,
            segments=pieces,
            duration_s=audio.duration_s,
            model=route.name,
            language=language or opts.language,
            timings_s=timings,
            speakers=talk_time,
            task=opts.task,
        )

    async def _transcribe_signal(
        self,
        samples: np.ndarray,
        route: ModelRoute,
        opts: RecognitionOptions,
        timings: dict[str, float],
        deadline_unix_s: float | None,
        request_id: str | None,
        diarize: DiarizationOptions | None,
        on_segment: SegmentCallback | None = None,
    ) -> _SignalResult:
        """VAD -> every segment to the recognizer (and, with ``diarize``, every embedding
        window to the speaker stage, at the same time) -> stitched segments."""
        t0 = time.perf_counter()
        vad_segments = await self._segment(samples)
        packed = pack_pieces(vad_segments, max_piece_ms=route.pack_segments_ms, samples=samples)
        segments = [piece.segment for piece in packed]
        timings["vad"] = time.perf_counter() - t0
        diarization_task = None
        if diarize is not None and self._embed is not None and vad_segments:
            diarization_task = asyncio.ensure_future(
                self._diarize(samples, vad_segments, diarize, timings, deadline_unix_s, request_id)
            )
        try:
            text, pieces, language = await self._recognize_segments(
                samples,
                route,
                opts,
                packed,
                segments,
                timings,
                deadline_unix_s,
                request_id,
                on_segment,
            )
            diarization = await diarization_task if diarization_task is not None else None
        finally:
            if diarization_task is not None and not diarization_task.done():
                diarization_task.cancel()
        if diarize is not None and diarization is None:
            diarization = Diarization(turns=())
        return _SignalResult(text, pieces, language, diarization)

    async def _diarize(
        self,
        samples: np.ndarray,
        vad_segments: list[SpeechSegment],
        options: DiarizationOptions,
        timings: dict[str, float],
        deadline_unix_s: float | None,
        request_id: str | None,
    ) -> Diarization:
        assert self._embed is not None
        started = time.perf_counter()
        result = await diarize_signal(
            samples,
            speech_spans_s(samples, [(seg.start_ms, seg.end_ms) for seg in vad_segments]),
            self._embed,
            options,
            self._diarization_settings,
            deadline_unix_s=deadline_unix_s,
            request_id=request_id,
        )
        timings["diarize"] = time.perf_counter() - started
        return result

    async def _recognize_segments(
        self,
        signal: np.ndarray,
        route: ModelRoute,
        opts: RecognitionOptions,
        packed: list[PackedPiece],
        segments: list[SpeechSegment],
        timings: dict[str, float],
        deadline_unix_s: float | None,
        request_id: str | None,
        on_segment: SegmentCallback | None = None,
    ) -> tuple[str, tuple[TranscriptSegment, ...], str | None]:
        def job(samples: np.ndarray) -> SegmentJob:
            return SegmentJob(
                audio=samples,
                options=opts,
                deadline_unix_s=deadline_unix_s,
                request_id=request_id,
            )

        t1 = time.perf_counter()
        opts, probed = await detect_request_language(
            route.recognize,
            route.detects_language,
            opts,
            [seg.slice(signal) for seg in segments[:PROBE_ITEMS]],
            deadline_unix_s=deadline_unix_s,
            request_id=request_id,
        )
        results = await _recognize_in_order(
            [
                _ready(probed[i]) if i in probed else route.recognize(job(seg.slice(signal)))
                for i, seg in enumerate(segments)
            ],
            segments,
            on_segment,
        )
        timings["recognize"] = time.perf_counter() - t1
        failed = any(isinstance(r, BaseException) for r in results)
        if route.pack_segments_ms > 0 and route.redecode_rounds > 0 and results and not failed:
            t2 = time.perf_counter()
            redecoder = Redecoder(
                [ItemAudio(p.segment.slice(signal), p.members_relative_ms()) for p in packed],
                results,
                max_rounds=route.redecode_rounds,
            )
            # Every stretch of every item at once: they share forward passes downstream.
            while redecode := redecoder.pending():
                redecoder.accept(
                    await asyncio.gather(
                        *(route.recognize(job(r.audio)) for r in redecode),
                        return_exceptions=True,
                    )
                )
            results = redecoder.results()
            if redecoder.redecodes:
                timings["redecode"] = time.perf_counter() - t2
            _record_redecodes(route.name, redecoder)
        stitched = stitch_segments([(seg.start_ms, seg.end_ms) for seg in segments], results)
        t3 = time.perf_counter()
        stitched = await punctuate_stitched(
            route.punctuate,
            stitched,
            enabled=opts.punctuate,
            deadline_unix_s=deadline_unix_s,
            request_id=request_id,
        )
        if route.punctuate is not None:
            timings["punctuate"] = time.perf_counter() - t3
        return stitched


@dataclass(frozen=True)
class SegmentDone:
    """One recognized item, reported while its request still runs (streaming).

    ``index``: its position among the request's items in audio order. ``text`` and
    ``pieces`` (in the audio's time) are the first pass: a re-decode or a post-stage may
    still change the final transcript.
    """

    index: int
    text: str
    pieces: tuple[TranscriptSegment, ...]


SegmentCallback = Callable[[SegmentDone], Awaitable[None]]


async def _recognize_in_order(
    calls: list[Awaitable[SegmentTranscript]],
    segments: list[SpeechSegment],
    on_segment: SegmentCallback | None,
) -> list[object]:
    """Every item at once (they meet in the recognizer's batches), results (or errors)
    in item order; with ``on_segment``, each item is reported as soon as it and every
    earlier one are done, and reporting stops at the first failed item."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        if on_segment is not None:
            for index, (task, seg) in enumerate(zip(tasks, segments, strict=True)):
                await asyncio.wait([task])
                if task.cancelled() or task.exception() is not None:
                    break  # the request fails at stitching, with this item's error
                text, pieces, _ = stitch_segments([(seg.start_ms, seg.end_ms)], [task.result()])
                await on_segment(SegmentDone(index, text, pieces))
        return list(await asyncio.gather(*tasks, return_exceptions=True))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


@dataclass(frozen=True)
class _SignalResult:
    text: str
    segments: tuple[TranscriptSegment, ...]
    language: str | None
    diarization: Diarization | None


def _record_redecodes(model: str, redecoder: Redecoder) -> None:
    for reason, count in redecoder.redecodes.items():
        observability.redecodes_total().inc(count, tags={"model": model, "reason": reason})
    for reason, count in redecoder.retimed.items():
        observability.retimed_items_total().inc(count, tags={"model": model, "reason": reason})


async def _ready(result: SegmentTranscript) -> SegmentTranscript:
    return result


def _merge(default: RecognitionOptions, given: RecognitionOptions | None) -> RecognitionOptions:
    if given is None:
        return default
    return RecognitionOptions(
        language=given.language or default.language,
        prompt=given.prompt or default.prompt,
        hotwords=given.hotwords or default.hotwords,
        word_timestamps=given.word_timestamps or default.word_timestamps,
        task=given.task,
        punctuate=default.punctuate if given.punctuate is None else given.punctuate,
    )


def unwrap_error(exc: BaseException) -> BaseException:
    """Ray wraps errors raised in another replica; find the typed one underneath."""
    seen = 0
    while not isinstance(exc, AsrError) and seen < 5:
        cause = getattr(exc, "cause", None) or exc.__cause__
        if cause is None:
            break
        exc = cause
        seen += 1
    return exc
