"""One live session, whatever its wire protocol: audio in, utterances out.

A :class:`LiveSession` takes 16 kHz float32 audio as it arrives, runs its own streaming VAD
(:class:`~serve_app.vad.streaming.SileroStream`, one state per session) and turn detection
(:mod:`serve_app.core.turns`), keeps only the audio of the utterance in progress (plus the
prefix padding), and at a turn's end (or a manual commit) hands the utterance to
``decode_final``: the ingress runs it through the file pipeline, so its segments are
ordinary items of the recognizer's cross-request batches and its text is what the same
audio sent as a file returns. While speech goes on, the utterance so far goes to
``decode_partial`` every ``partial_interval_s`` of audio (one in flight per session; the
ingress sends it as a low-priority item that a newer partial replaces in the queue).

A turn ends after ``silence_duration_ms`` of silence, but the audio it commits (up to the
last speech plus ``END_PAD_MS``) is known as soon as that pad of silence is heard: the final
decode starts then (``early_final_ms``), while the detector waits for the rest of the
silence. If speech resumes first, that decode is cancelled; if the turn ends where it was
guessed, it is the final (the same audio, so the same text) and has had a head start of
``silence_duration_ms - early_final_ms``: a live user's wait at a pause.

What it reports goes to ``emit`` as :class:`LiveEvent` values, in order; finals of one
session are reported in utterance order even when a later one finishes first. Nothing
here knows the wire format (serve_app.online.realtime.openai_ws, .funasr_ws) or Ray.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from serve_app.core import observability
from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.errors import AsrError, InternalError, InvalidRequestError
from serve_app.core.transcript import Transcription
from serve_app.core.turns import TurnDetector, TurnEvent, TurnSettings

logger = logging.getLogger(__name__)

_PER_MS = SAMPLE_RATE_HZ // 1000
# Audio kept after the end of speech in a committed turn (the file pipeline's VAD pads
# segments by itself; this only keeps a word's tail the turn detector called silence).
END_PAD_MS = 200

FinalFn = Callable[[np.ndarray], Awaitable[Transcription]]
PartialFn = Callable[[np.ndarray, str], Awaitable[str | None]]


@dataclass(frozen=True)
class LiveEvent:
    """``kind``: started, stopped, committed, cleared, partial, final, failed."""

    kind: Literal["started", "stopped", "committed", "cleared", "partial", "final", "failed"]
    item_id: str = ""
    at_ms: int = 0  # started/stopped: stream time; committed/final: the utterance's start
    end_ms: int = 0  # committed/final: the utterance's end (stream time)
    previous_item_id: str | None = None
    text: str = ""
    transcription: Transcription | None = None
    error: AsrError | None = None


Emit = Callable[[LiveEvent], Awaitable[None]]


@dataclass
class _Utterance:
    item_id: str
    start_ms: int
    pad_ms: int = 0  # audio kept before start_ms (prefix padding of a detected start)
    final_emitted: bool = False
    partial_task: asyncio.Task | None = None
    last_partial_ms: int = 0
    partial_text: str = ""
    # The final decoded early, before the turn's end is sure: (its end_ms, the decode).
    early: tuple[int, asyncio.Task] | None = None


@dataclass
class SessionLimits:
    partial_interval_s: float = 0.8
    max_buffer_s: float = 300.0  # manual commits: audio held before a commit
    max_pending_finals: int = 8  # utterances decoding at once (more: reading waits)
    # Silence heard before the final decode starts (at least END_PAD_MS; 0: at the turn's
    # end, after silence_duration_ms).
    early_final_ms: int = END_PAD_MS


@dataclass
class LiveSession:
    decode_final: FinalFn
    decode_partial: PartialFn | None
    emit: Emit
    limits: SessionLimits = field(default_factory=SessionLimits)
    # None: manual commits only (OpenAI's turn_detection null).
    turns: TurnSettings | None = field(default_factory=TurnSettings)
    make_vad: Callable[[], Any] | None = None
    # Called with an utterance's item id when it ends (committed, cleared, the session
    # closed): what its partials kept (a streaming model's state) is freed at once.
    end_partial: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._stream_ms = 0.0  # audio received, in ms (fractional: 24 kHz chunks)
        self._chunks: list[np.ndarray] = []
        self._buffer_start_sample = 0  # stream sample index of self._chunks[0][0]
        self._buffered = 0
        self._received = 0  # samples received in all
        self._vad: Any = None
        self._detector: TurnDetector | None = None
        self._utterance: _Utterance | None = None
        self._previous_item_id: str | None = None
        self._finals: list[asyncio.Task] = []
        self._emit_lock = asyncio.Lock()
        self._last_emitted: asyncio.Future | None = None
        self.configure(self.turns)

    # -- settings ------------------------------------------------------------------------

    def configure(self, turns: TurnSettings | None) -> None:
        """Turn detection on (with these settings) or off; audio and items are kept."""
        self.turns = turns
        self.options_changed()
        if turns is None:
            self._vad = self._detector = None
            return
        from serve_app.vad.streaming import WINDOW_MS, SileroStream

        self._vad = self.make_vad() if self.make_vad else SileroStream()
        self._detector = TurnDetector(turns, window_ms=WINDOW_MS)
        self._detector.position_ms = int(self._received / _PER_MS) // WINDOW_MS * WINDOW_MS

    def options_changed(self) -> None:
        """The decode's settings changed: a final decoded early with the old ones is dropped
        (it is decoded again at the turn's end)."""
        if self._utterance is not None:
            _drop_early(self._utterance)

    @property
    def pending_finals(self) -> int:
        return sum(not task.done() for task in self._finals)

    @property
    def busy(self) -> bool:
        """A decode of this session is queued or running (the idle timeout waits)."""
        utterance = self._utterance
        if utterance is None:
            return self.pending_finals > 0
        tasks = [utterance.partial_task, utterance.early[1] if utterance.early else None]
        return self.pending_finals > 0 or any(t is not None and not t.done() for t in tasks)

    # -- audio in ------------------------------------------------------------------------

    async def append(self, samples: np.ndarray) -> None:
        if len(samples) == 0:
            return
        self._chunks.append(np.asarray(samples, np.float32))
        self._buffered += len(samples)
        self._received += len(samples)
        if self._detector is None:
            if self._utterance is None:
                self._utterance = _Utterance(
                    _new_item_id(), self._sample_ms(self._received - len(samples))
                )
            if self._buffered > self.limits.max_buffer_s * SAMPLE_RATE_HZ:
                self._drop_oldest(self._buffered - int(self.limits.max_buffer_s * SAMPLE_RATE_HZ))
                raise InvalidRequestError(
                    f"the input audio buffer is over {self.limits.max_buffer_s:.0f} s: its "
                    "oldest audio was dropped; commit more often",
                    param="audio",
                )
            return
        assert self._vad is not None
        for event in self._detector.push(list(self._vad.push(samples))):
            await self._turn_event(event)
        if self._utterance is None and self._detector.in_turn is False:
            self._keep_from_ms(self._detector.position_ms - self.turns.prefix_padding_ms)  # type: ignore[union-attr]
        elif self._utterance is None and self._detector.in_turn:
            self._keep_from_ms(self._detector.turn_start_ms - self.turns.prefix_padding_ms)  # type: ignore[union-attr]
        self._maybe_early_final()
        self._maybe_partial()

    async def _turn_event(self, event: TurnEvent) -> None:
        assert self.turns is not None
        if event.kind == "started":
            self._utterance = _Utterance(
                _new_item_id(), event.at_ms, pad_ms=self.turns.prefix_padding_ms
            )
            self._utterance.last_partial_ms = event.at_ms
            await self._emit(LiveEvent("started", self._utterance.item_id, at_ms=event.at_ms))
        elif event.kind == "stopped" and self._utterance is not None:
            await self._emit(LiveEvent("stopped", self._utterance.item_id, at_ms=event.at_ms))
            end_ms = event.at_ms + END_PAD_MS
            early = self._utterance.early
            decoded = early[1] if early is not None and early[0] == end_ms else None
            await self._commit(end_ms, decoded)
        elif event.kind == "cut" and self._utterance is not None:
            await self._commit(event.at_ms)
            self._utterance = _Utterance(_new_item_id(), event.at_ms, last_partial_ms=event.at_ms)

    async def commit(self) -> str:
        """The client's commit: the audio so far is one utterance (even mid-speech)."""
        if self._buffered == 0 or self._utterance is None:
            raise InvalidRequestError(
                "the input audio buffer holds no speech to commit", param="input_audio_buffer"
            )
        item_id = self._utterance.item_id
        await self._commit(self._sample_ms(self._received))
        if self._detector is not None:
            self._detector.reset()
        return item_id

    async def clear(self) -> None:
        """Drop the buffered audio and the utterance in progress."""
        if self._utterance is not None:
            self._end_partials(self._utterance)
        self._utterance = None
        self._drop_oldest(self._buffered)
        if self._detector is not None:
            self._detector.reset()
        await self._emit(LiveEvent("cleared"))

    async def finish(self) -> None:
        """End of input (FunASR's ``is_speaking: false``): commit what is left, wait for
        every final to be reported."""
        if self._utterance is not None and self._buffered:
            await self._commit(self._sample_ms(self._received))
        if self._finals:
            await asyncio.gather(*self._finals, return_exceptions=True)

    async def close(self) -> None:
        """The client left: cancel every decode of this session and drop its audio."""
        tasks = list(self._finals)
        if self._utterance is not None and self._utterance.partial_task is not None:
            tasks.append(self._utterance.partial_task)
        if self._utterance is not None and self._utterance.early is not None:
            tasks.append(self._utterance.early[1])
        if self._utterance is not None:
            self._end_partials(self._utterance)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._finals.clear()
        self._chunks.clear()
        self._buffered = 0
        self._utterance = None
        self._vad = None

    # -- utterances ----------------------------------------------------------------------

    async def _commit(self, end_ms: int, decoded: asyncio.Task | None = None) -> None:
        """``decoded``: this very audio's final decode, started early (see the module)."""
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        if decoded is not None:
            utterance.early = None  # taken: _end_partials must not cancel it
            observability.live_early_finals_total().inc(tags={"outcome": "used"})
        self._end_partials(utterance)  # a queued partial item is dropped, not decoded
        start_ms = max(0, utterance.start_ms - utterance.pad_ms)
        samples = self._slice_ms(start_ms, end_ms)
        self._keep_from_ms(end_ms)
        previous, self._previous_item_id = self._previous_item_id, utterance.item_id
        await self._emit(
            LiveEvent(
                "committed",
                utterance.item_id,
                at_ms=start_ms,
                end_ms=end_ms,
                previous_item_id=previous,
            )
        )
        while self.pending_finals >= self.limits.max_pending_finals:
            # Audio faster than real time (a file streamed as fast as it is read): the
            # session reads no more of the client's messages until a decode ends, so the
            # socket slows the client down. Nothing is dropped (each decode has its
            # deadline: the wait ends).
            running = [task for task in self._finals if not task.done()]
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        self._finals = [task for task in self._finals if not task.done()]
        previous_done = self._last_emitted
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._last_emitted = done
        task = asyncio.create_task(
            self._final(utterance, decoded or samples, start_ms, end_ms, previous_done, done)
        )
        self._finals.append(task)

    async def _final(
        self,
        utterance: _Utterance,
        samples: np.ndarray | asyncio.Task,
        start_ms: int,
        end_ms: int,
        previous_done: asyncio.Future | None,
        done: asyncio.Future,
    ) -> None:
        try:
            try:
                result: Transcription | AsrError = await (
                    self.decode_final(samples) if isinstance(samples, np.ndarray) else samples
                )
            except AsrError as exc:
                result = exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the session
                logger.exception("live final decode failed")
                result = InternalError(f"the utterance could not be decoded: {exc!r}")
            if previous_done is not None:
                await asyncio.shield(previous_done)  # report in utterance order
            utterance.final_emitted = True
            if isinstance(result, AsrError):
                await self._emit(LiveEvent("failed", utterance.item_id, error=result))
            else:
                await self._emit(
                    LiveEvent(
                        "final",
                        utterance.item_id,
                        at_ms=start_ms,
                        end_ms=end_ms,
                        text=result.text,
                        transcription=result,
                    )
                )
        finally:
            if not done.done():
                done.set_result(None)

    def _maybe_early_final(self) -> None:
        utterance, detector = self._utterance, self._detector
        if utterance is None or detector is None or self.limits.early_final_ms <= 0:
            return
        end_ms = detector.speech_end_ms + END_PAD_MS
        if utterance.early is not None and utterance.early[0] != end_ms:
            _drop_early(utterance)  # speech went on: not where the turn ends
        wait_ms = max(END_PAD_MS, self.limits.early_final_ms)
        if utterance.early is not None or not detector.confirmed or detector.silence_ms < wait_ms:
            return
        if self.pending_finals >= self.limits.max_pending_finals:
            return  # audio faster than real time: the commit waits its turn, as ever
        start_ms = max(0, utterance.start_ms - utterance.pad_ms)
        decode = asyncio.ensure_future(self.decode_final(self._slice_ms(start_ms, end_ms)))
        decode.add_done_callback(_consume)  # a cancelled or failed guess is nobody's error
        utterance.early = (end_ms, decode)

    def _maybe_partial(self) -> None:
        utterance = self._utterance
        if self.decode_partial is None or utterance is None or self.turns is None:
            return
        if utterance.early is not None:
            return  # the final is on its way: no partial of the silence before it
        if utterance.partial_task is not None and not utterance.partial_task.done():
            return  # one in flight per session
        now_ms = self._sample_ms(self._received)
        if now_ms - utterance.last_partial_ms < self.limits.partial_interval_s * 1000:
            return
        utterance.last_partial_ms = now_ms
        samples = self._slice_ms(utterance.start_ms - utterance.pad_ms, now_ms)
        utterance.partial_task = asyncio.create_task(self._partial(utterance, samples))

    def _end_partials(self, utterance: _Utterance) -> None:
        if utterance.partial_task is not None:
            utterance.partial_task.cancel()
        _drop_early(utterance)
        if self.end_partial is not None:
            self.end_partial(utterance.item_id)

    async def _partial(self, utterance: _Utterance, samples: np.ndarray) -> None:
        assert self.decode_partial is not None
        try:
            text = await self.decode_partial(samples, utterance.item_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a partial is best effort: the final still comes
            logger.debug("live partial skipped: %r", exc)
            return
        # A partial cut short (its forward yielded to a final) may be a prefix of the last
        # one: showing it would take text back on the screen.
        if text is None or utterance.final_emitted or utterance.partial_text.startswith(text):
            return
        utterance.partial_text = text
        await self._emit(LiveEvent("partial", utterance.item_id, text=text))

    # -- the audio buffer ----------------------------------------------------------------

    def _sample_ms(self, sample: int) -> int:
        return sample // _PER_MS

    def _slice_ms(self, start_ms: int, end_ms: int) -> np.ndarray:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        self._chunks = [audio] if len(audio) else []
        first = max(0, start_ms * _PER_MS - self._buffer_start_sample)
        last = max(first, min(len(audio), end_ms * _PER_MS - self._buffer_start_sample))
        return audio[first:last].copy()

    def _keep_from_ms(self, start_ms: int) -> None:
        drop = start_ms * _PER_MS - self._buffer_start_sample
        if drop > 0:
            self._drop_oldest(min(drop, self._buffered))

    def _drop_oldest(self, count: int) -> None:
        if count <= 0:
            return
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        audio = audio[count:]
        self._chunks = [audio] if len(audio) else []
        self._buffered = len(audio)
        self._buffer_start_sample += count

    async def _emit(self, event: LiveEvent) -> None:
        async with self._emit_lock:
            await self.emit(event)


def _drop_early(utterance: _Utterance) -> None:
    if utterance.early is not None:
        utterance.early[1].cancel()
        utterance.early = None
        observability.live_early_finals_total().inc(tags={"outcome": "dropped"})


def _consume(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


def _new_item_id() -> str:
    return "item_" + uuid.uuid4().hex[:20]
