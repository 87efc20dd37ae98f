"""The online driver of the per-file pipeline (``serve_app.core.pipeline``).

``TranscriptionService`` decodes once, asks the VAD for segments, and runs the pipeline's
steps with every stage call sent through an async callable: the ingress passes deployment
handles, so every segment of every request is its own item in the recognizer's dynamic
batches; unit tests pass fakes. No Ray import here.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.config import AudioSettings, ChannelSettings, DiarizationSettings
from serve_app.core.audio import DecodedAudio, decode_audio
from serve_app.core.diarization import check_diarization_size
from serve_app.core.errors import InvalidRequestError, UnknownModelError
from serve_app.core.language import DetectsFn
from serve_app.core.pipeline import (
    Call,
    Embed,
    Offload,
    Punctuate,
    Recognize,
    Route,
    Steps,
    Trace,
    assemble,
    diarize_signal,
    gather,
    merge_options,
    recognize_signal,
    speech_items,
    unwrap_error,
)
from serve_app.core.punctuate import PunctuateFn
from serve_app.core.segmentation import SpeechSegment, pack_pieces
from serve_app.core.speaker_request import EmbedFn, SpeakerRequest
from serve_app.core.transcript import Transcription, TranscriptSegment, stitch_segments
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
    # Re-decode rounds for what an item's decode did not account for or said wrongly (see
    # serve_app.core.coverage; RecognizerSettings.redecode_rounds says for which models).
    redecode_rounds: int = 0
    # Items of one request on their way to the recognizer at once (0: all). What a replica
    # holds is ordered fairly across requests (serve_app.online.batch_queue); what waits in
    # Serve's router beyond its max_ongoing_requests is first come first served, so an
    # hour's 150 items sent at once kept a 3 s request's one item waiting behind all of them.
    items_in_flight: int = 0
    # The punctuation stage after stitching (serve_app/punctuation/); None: none.
    punctuate: PunctuateFn | None = None
    # Whether the model detects the language itself (asked once, then cached by the
    # caller): then a request without a language is detected once (serve_app.core.language).
    detects_language: DetectsFn | None = None


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


class TranscriptionService:
    """Decode -> VAD -> the pipeline's steps over deployment handles -> :class:`Transcription`."""

    def __init__(
        self,
        *,
        segment: SegmentFn,
        routes: Mapping[str, ModelRoute],
        default_model: str,
        limits: AudioSettings,
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
        opts = merge_options(route.default_options, options)
        speakers = speakers or SpeakerRequest()
        signals = [audio.samples]
        split = speakers.channels == "split" and bool(audio.channels)
        if split:
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
        if diarize is not None:  # a 413 past speakers.max_audio_s, before the VAD runs
            check_diarization_size(audio.duration_s, self._diarization_settings)
        trace = Trace()
        started = time.perf_counter()
        vad = await asyncio.gather(*(self._segment(s) for s in signals))
        trace.add("vad", time.perf_counter() - started)
        items = [
            speech_items(s, pack_pieces(v, max_piece_ms=route.pack_segments_ms, samples=s))
            for s, v in zip(signals, vad)
        ]
        detects = False
        if opts.language is None and route.detects_language is not None and any(items):
            detects = await route.detects_language()
        spec = Route(
            route.name,
            redecode_rounds=route.redecode_rounds,
            detects_language=detects,
            punctuates=route.punctuate is not None,
        )
        steps: list[Steps[Any]] = [
            recognize_signal(
                mine,
                spec,
                opts,
                deadline_unix_s=deadline_unix_s,
                request_id=request_id,
                trace=trace,
            )
            for mine in items
        ]
        if diarize is not None:
            steps.append(
                diarize_signal(
                    signals[0],
                    vad[0],
                    diarize,
                    self._diarization_settings,
                    deadline_unix_s=deadline_unix_s,
                    request_id=request_id,
                    trace=trace,
                )
            )
        report = on_segment if len(signals) == 1 else None
        outcomes = await self._drive(gather(steps), route, report)
        names = [self._channels.name(i) for i in range(len(signals))] if split else []
        result = assemble(
            outcomes[: len(items)],
            channel_names=names,
            diarization=outcomes[-1] if diarize is not None else None,
        )
        return Transcription(
            text=result.text,
            segments=result.segments,
            duration_s=audio.duration_s,
            model=route.name,
            language=result.language or opts.language,
            timings_s=trace.timings_s,
            speakers=result.talk_time_s,
            task=opts.task,
        )

    async def _drive(
        self, steps: Steps[Any], route: ModelRoute, on_segment: SegmentCallback | None
    ) -> Any:
        """Run ``steps``: every call of a round at once (they meet in the stages' batches)."""
        try:
            calls = next(steps)
            while True:
                outcomes = await asyncio.gather(*(self._call(c, route, on_segment) for c in calls))
                calls = steps.send(list(outcomes))
        except StopIteration as stop:
            return stop.value
        finally:
            steps.close()

    async def _call(self, call: Call, route: ModelRoute, on_segment: SegmentCallback | None) -> Any:
        """One stage call's outcome: its value, or the exception it raised."""
        if isinstance(call, Recognize):
            calls = [
                _ready(call.known[i]) if i in call.known else route.recognize(job)
                for i, job in enumerate(call.jobs)
            ]
            report = on_segment if call.spans_ms is not None else None
            return await _recognize_in_order(
                calls, call.spans_ms or (), report, window=route.items_in_flight
            )
        try:
            if isinstance(call, Embed):
                assert self._embed is not None
                embed = self._embed
                return await asyncio.gather(
                    *(embed(job) for job in call.jobs), return_exceptions=True
                )
            if isinstance(call, Punctuate):
                assert route.punctuate is not None
                return await route.punctuate(call.request)
            if isinstance(call, Offload):
                return await asyncio.to_thread(call.fn)
        except Exception as exc:  # an outcome: the step decides what fails
            return exc
        raise TypeError(f"unknown stage call {call!r}")


async def _recognize_in_order(
    calls: list[Awaitable[SegmentTranscript]],
    spans_ms: Sequence[tuple[int, int]],
    on_segment: SegmentCallback | None,
    *,
    window: int = 0,
) -> list[object]:
    """The items (they meet in the recognizer's batches), at most ``window`` of them on
    their way at once (0: all), in item order; results (or errors) in item order; with
    ``on_segment``, each item is reported as soon as it and every earlier one are done,
    and reporting stops at the first failed item."""
    if window > 0 and len(calls) > window:
        gate = asyncio.Semaphore(window)

        async def gated(call: Awaitable[SegmentTranscript]) -> SegmentTranscript:
            async with gate:
                return await call

        calls = [gated(call) for call in calls]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        if on_segment is not None:
            for index, (task, span) in enumerate(zip(tasks, spans_ms, strict=True)):
                await asyncio.wait([task])
                if task.cancelled() or task.exception() is not None:
                    break  # the request fails at stitching, with this item's error
                text, pieces, _ = stitch_segments([span], [task.result()])
                await on_segment(SegmentDone(index, text, pieces))
        return list(await asyncio.gather(*tasks, return_exceptions=True))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _ready(result: SegmentTranscript) -> SegmentTranscript:
    return result


__all__ = [
    "ModelRoute",
    "SegmentCallback",
    "SegmentDone",
    "TranscriptionService",
    "unwrap_error",
]
