"""The ingress side of live sessions (:class:`LiveBackend` over the replica's handles).

- A final is the utterance sent through the file pipeline (``TranscriptionService``: VAD
  segments, recognizer items with retries, re-decode coverage, punctuation), charged to
  the model's admission queue like an upload: the same items, batched with every file
  request and every other session's finals, and the same text as the file path.
- A partial is one recognizer item of the utterance so far, sent with ``priority=1`` and a
  ``coalesce_key`` (the session and item): the recognizer's queue runs it only when no
  file segment or final waits, in small forwards of its own, and a newer partial of the
  same utterance replaces a queued older one. It is not retried and not charged to
  admission: a partial lost under load is just skipped, as is one that repeats a phrase
  (Whisper on a prefix cut mid-sentence). The previous partial's tokens ride along as the
  item's draft (a backend that returns tokens, Moonshine, checks them in one decoder pass
  instead of re-decoding the words already heard one step each), kept per utterance until
  ``end_partial``. Finals take no draft: with the int8 decoder a draft moves near ties its
  way (live counting came back "12345678910" for "1, 2, 3, ..." in 2 of 5 finals), and a
  final must read as the same audio sent as a file does.
- With a streaming model configured for the model (its ``streaming`` section: FunASR's
  2pass), a partial is instead the utterance's new samples fed to the streaming
  deployment, which keeps the utterance's state (routed by session: Serve's multiplexed
  model id) until the utterance ends (``end_partial``). Here only the count of samples fed
  and the text are kept. A call that fails leaves the state as it was (its audio is fed
  again with the next); a state that is not where it was (another replica, a restart) is
  rebuilt from the utterance's start.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import numpy as np

from serve_app.config import RealtimeSettings
from serve_app.core import observability
from serve_app.core.audio import SAMPLE_RATE_HZ, DecodedAudio
from serve_app.core.errors import OverloadedError
from serve_app.core.pipeline import merge_options
from serve_app.core.text import has_words, repeats_a_phrase
from serve_app.core.transcript import Transcription
from serve_app.core.types import (
    RecognitionOptions,
    SegmentJob,
    SegmentTranscript,
    StreamReply,
    StreamStep,
)
from serve_app.online import request_scope
from serve_app.online.admission import AdmissionController
from serve_app.online.realtime.backend import SessionSlots
from serve_app.online.service import TranscriptionService

PartialCall = Callable[[SegmentJob], Awaitable[SegmentTranscript]]


class StreamClient(Protocol):
    """A streaming deployment as the ingress calls it (serve_app.online.ingress)."""

    async def step(self, call: StreamStep) -> StreamReply | None: ...

    def end(self, session_id: str, key: str) -> None: ...


class IngressLive:
    def __init__(
        self,
        *,
        settings: RealtimeSettings,
        service: TranscriptionService,
        admission: Mapping[str, AdmissionController],
        partial_calls: Mapping[str, PartialCall],
        request_timeout_s: float,
        publish: Callable[[str], None] = lambda model: None,
        stream_calls: Mapping[str, StreamClient] | None = None,
    ) -> None:
        self.settings = settings
        self._service = service
        self._admission = admission
        self._partial_calls = partial_calls
        self._stream_calls = dict(stream_calls or {})
        # Utterance key -> (model, samples its streaming state was fed, its text), 2pass
        # models only, until end_partial; the state itself is on the streaming replica.
        self.streams: dict[str, tuple[str, int, str]] = {}
        # Utterance key -> the tokens of its last partial (re-decoded partials only).
        self.drafts: dict[str, tuple[int, ...]] = {}
        self._request_timeout_s = request_timeout_s
        self._publish = publish
        self.slots = SessionSlots(settings.max_sessions)

    def resolve_model(self, model: str | None) -> str:
        return self._service.route(model or self.settings.default_model).name

    def session_slot(self) -> contextlib.AbstractContextManager[None]:
        """A slot of the replica's session cap, after the live model's admission check:
        a new session is refused (``overloaded``) while that model's queue is over its
        bound, as an upload would be, instead of adding finals that would be refused."""
        try:
            self._admission[self.resolve_model(None)].check(0.0)
        except OverloadedError:
            observability.admission_rejections_total().inc(
                tags={"model": self.resolve_model(None), "stage": "live_connect"}
            )
            raise
        return self.slots.slot()

    async def decode_final(
        self, samples: np.ndarray, *, model: str, options: RecognitionOptions
    ) -> Transcription:
        audio = DecodedAudio(samples, SAMPLE_RATE_HZ, "live/pcm_f32")
        controller = self._admission[model]
        try:
            ticket = controller.admit(audio.duration_s, speech=True)
        except OverloadedError:
            observability.admission_rejections_total().inc(tags={"model": model, "stage": "live"})
            raise
        self._publish(model)
        deadline_unix_s = time.time() + self._request_timeout_s
        scope = request_scope.RequestScope(deadline_unix_s, ticket, model)
        token = request_scope.CURRENT.set(scope)
        try:
            return await self._service.transcribe(
                audio,
                model=model,
                options=options,
                deadline_unix_s=deadline_unix_s,
                request_id="live-" + uuid.uuid4().hex[:16],
            )
        finally:
            request_scope.CURRENT.reset(token)
            ticket.close()
            self._publish(model)

    async def decode_partial(
        self, samples: np.ndarray, *, model: str, options: RecognitionOptions, key: str
    ) -> str | None:
        if len(samples) == 0:
            return None
        route = self._service.route(model)
        if route.name in self._stream_calls:
            return await self._stream_partial(samples, route.name, key)
        max_s = self.settings.max_turn_s
        if len(samples) > max_s * SAMPLE_RATE_HZ:
            samples = samples[-int(max_s * SAMPLE_RATE_HZ) :]
        job = SegmentJob(
            np.ascontiguousarray(samples, dtype=np.float32),
            options=merge_options(route.default_options, options),
            deadline_unix_s=time.time() + self.settings.partial_timeout_s,
            request_id=key,
            priority=1,
            coalesce_key=key,
            draft_tokens=self.drafts.get(key, ()),
        )
        result = await self._partial_calls[model](job)
        if result.tokens:
            self.drafts[key] = result.tokens
        if repeats_a_phrase(result.text):
            # A prefix cut mid-sentence makes Whisper repeat itself; a partial is optional
            # and revisable, and FunASR's online modes would send the repeat as new words:
            # skipped (the final, decoded whole with the re-decode coverage, is unaffected).
            observability.errors_total().inc(tags={"kind": "partial_repeats", "stage": "live"})
            return None
        return result.text if has_words(result.text) else None  # not "." for a cough

    async def _stream_partial(self, samples: np.ndarray, model: str, key: str) -> str | None:
        """The utterance so far -> its streaming text: only the samples after those its
        state was fed are sent (one call in flight per utterance: the session waits for
        each); from the start again if the state is not where it was."""
        _, fed, text = self.streams.get(key, (model, 0, ""))
        session_id = key.rsplit("/", 1)[0]
        for start in (fed, 0) if fed else (0,):
            if start >= len(samples):
                return text or None
            call = StreamStep(
                session_id,
                key,
                np.ascontiguousarray(samples[start:], dtype=np.float32),
                start,
                deadline_unix_s=time.time() + self.settings.partial_timeout_s,
            )
            reply = await self._stream_calls[model].step(call)
            if reply is not None:
                self.streams[key] = (model, reply.fed_samples, reply.text)
                return reply.text or None
            observability.retries_total().inc(tags={"stage": "streaming", "kind": "state_missing"})
        return None

    def end_partial(self, key: str) -> None:
        """The utterance ``key`` ended (committed, cleared, its session closed): its
        streaming state, if any, is dropped now, here and on the streaming replica."""
        self.drafts.pop(key, None)
        stream = self.streams.pop(key, None)
        if stream is not None:
            self._stream_calls[stream[0]].end(key.rsplit("/", 1)[0], key)
