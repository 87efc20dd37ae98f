"""Request-level transcription logic with injected stages (no Ray, no HTTP).

``TranscriptionService`` decodes once, asks the VAD for segments, sends every segment as
its own item to the recognizer (so segments of many requests meet in one dynamic batch),
and stitches the results back in order with timestamps in the original audio's time. The
stages are plain async callables: the Serve ingress passes deployment handles, the unit
tests pass fakes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from serve_app import observability
from serve_app.audio import AudioLimits, DecodedAudio, decode_audio
from serve_app.coverage import ItemAudio, Redecoder
from serve_app.errors import AsrError, UnknownModelError
from serve_app.recognizers.base import RecognitionOptions, SegmentJob, SegmentTranscript
from serve_app.segmentation import SpeechSegment, pack_pieces
from serve_app.transcript import Transcription, TranscriptSegment, stitch_segments

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
    # serve_app.coverage); only with packing, whose items are decoded with timestamps.
    redecode_rounds: int = 2


class TranscriptionService:
    """Decode -> VAD -> per-segment recognition -> stitched :class:`Transcription`."""

    def __init__(
        self,
        *,
        segment: SegmentFn,
        routes: Mapping[str, ModelRoute],
        default_model: str,
        limits: AudioLimits,
    ) -> None:
        self._segment = segment
        self._routes = dict(routes)
        self._default_model = default_model
        self._limits = limits

    def route(self, model: str | None) -> ModelRoute:
        name = model or self._default_model
        try:
            return self._routes[name]
        except KeyError:
            raise UnknownModelError(
                f"model {name!r} is not served; available: {sorted(self._routes)}", param="model"
            ) from None

    async def decode(self, data: bytes) -> DecodedAudio:
        # Decoding is CPU work: keep it off the event loop that serves other requests.
        return await asyncio.to_thread(decode_audio, data, self._limits)

    async def transcribe(
        self,
        audio: DecodedAudio,
        *,
        model: str | None,
        options: RecognitionOptions | None = None,
        deadline_unix_s: float | None = None,
        request_id: str | None = None,
        on_segment: SegmentCallback | None = None,
    ) -> Transcription:
        """Transcribe decoded audio. Every segment job carries ``deadline_unix_s`` and
        ``request_id`` so downstream stages can drop work of requests that gave up.

        ``on_segment`` (streaming) is awaited with each recognized item in audio order, as
        soon as it and every earlier one are done. What this returns does not change."""
        route = self.route(model)
        opts = _merge(route.default_options, options)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        packed = pack_pieces(
            await self._segment(audio.samples), max_piece_ms=route.pack_segments_ms
        )
        segments = [piece.segment for piece in packed]
        timings["vad"] = time.perf_counter() - t0

        def job(samples: np.ndarray) -> SegmentJob:
            return SegmentJob(
                audio=samples,
                options=opts,
                deadline_unix_s=deadline_unix_s,
                request_id=request_id,
            )

        t1 = time.perf_counter()
        results = await _recognize_in_order(
            [route.recognize(job(seg.slice(audio.samples))) for seg in segments],
            segments,
            on_segment,
        )
        timings["recognize"] = time.perf_counter() - t1
        failed = any(isinstance(r, BaseException) for r in results)
        if route.pack_segments_ms > 0 and route.redecode_rounds > 0 and results and not failed:
            t2 = time.perf_counter()
            redecoder = Redecoder(
                [
                    ItemAudio(p.segment.slice(audio.samples), p.members_relative_ms())
                    for p in packed
                ],
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
        text, pieces, language = stitch_segments(
            [(seg.start_ms, seg.end_ms) for seg in segments], results
        )
        return Transcription(
            text=text,
            segments=pieces,
            duration_s=audio.duration_s,
            model=route.name,
            language=language or opts.language,
            timings_s=timings,
        )


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


def _record_redecodes(model: str, redecoder: Redecoder) -> None:
    for reason, count in redecoder.redecodes.items():
        observability.redecodes_total().inc(count, tags={"model": model, "reason": reason})
    for reason, count in redecoder.retimed.items():
        observability.retimed_items_total().inc(count, tags={"model": model, "reason": reason})


def _merge(default: RecognitionOptions, given: RecognitionOptions | None) -> RecognitionOptions:
    if given is None:
        return default
    return RecognitionOptions(
        language=given.language or default.language,
        prompt=given.prompt or default.prompt,
        hotwords=given.hotwords or default.hotwords,
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
