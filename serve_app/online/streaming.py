"""``stream=true``: one transcription as Server-Sent Events in OpenAI's event shapes.

Each event is one ``data: <json>`` line and a blank line (no ``event:`` field, as OpenAI
sends them; the official client dispatches on ``type``):

- ``{"type": "transcript.text.delta", "delta": "...", "start": 1.2, "end": 3.4}``: one per
  recognized item, in audio order, as soon as it and every earlier one are done. The
  deltas concatenate to the first-pass text (a space between words, none between CJK
  characters); ``start``/``end`` (seconds, an extension the client ignores) let a page
  show timestamps as text arrives.
- ``{"type": "transcript.text.done", "text": "..."}``: the final text, the same text a
  non-streamed request answers (after re-decodes and post-stages, which deltas predate).
- ``{"type": "error", "error": {"message", "type", "param", "code"}, "request_id"}``: the
  transcription failed after the stream began (a segment's error, the deadline); the
  stream ends after it. The official client raises ``openai.APIError`` with the message.
  Errors before the stream starts (validation, admission) are plain JSON responses.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from serve_app.core.transcript import Transcription, join_texts
from serve_app.online.service import SegmentCallback, SegmentDone

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
# Proxies (nginx: X-Accel-Buffering) must pass each event on at once.
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

RunFn = Callable[[SegmentCallback | None], Awaitable[Transcription]]
ErrorBodyFn = Callable[[BaseException], dict]
DoneFieldsFn = Callable[[Transcription], dict]


def sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def delta_event(delta: str, start_s: float, end_s: float) -> bytes:
    return sse(
        {
            "type": "transcript.text.delta",
            "delta": delta,
            "start": round(start_s, 3),
            "end": round(end_s, 3),
        }
    )


def done_event(fields: dict) -> bytes:
    """``fields``: ``text`` and any extension (the ingress adds ``response``)."""
    return sse({"type": "transcript.text.done", **fields})


def _plain_text(transcription: Transcription) -> dict:
    return {"text": transcription.text}


def error_event(body: dict) -> bytes:
    """``body``: the ingress's JSON error body (``{"error": {...}, "request_id": ...}``)."""
    return sse({"type": "error", **body})


class _Deltas:
    """Texts -> deltas that concatenate like :func:`join_texts` joins them."""

    def __init__(self) -> None:
        self._last_char = ""
        self.count = 0

    def next(self, text: str) -> str | None:
        text = text.strip()
        if not text:
            return None
        # join_texts decides the separator from the last character only.
        delta = join_texts([self._last_char, text])[len(self._last_char) :]
        self._last_char = text[-1]
        self.count += 1
        return delta


class TranscriptStream:
    """Runs one transcription in its own task and yields its events in order.

    ``run(on_segment)`` is the request's transcription (the ingress's closure holding its
    admission ticket, request scope and deadline). It starts in :meth:`start`, before the
    response is returned, so its ticket is released even if the client never reads the
    body. ``error_body`` turns an exception into the JSON error body with its status
    mapping (the ingress owns that mapping).
    """

    def __init__(
        self,
        run: RunFn,
        *,
        error_body: ErrorBodyFn,
        done_fields: DoneFieldsFn = _plain_text,
        on_finish: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self._error_body = error_body
        self._done_fields = done_fields
        self._on_finish = on_finish
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._deltas = _Deltas()
        self._task: asyncio.Task | None = None
        self._ended = False  # a done or error event is queued

    def start(self) -> None:
        """Start the transcription. ``on_finish`` runs when it ends, however it ends (even
        cancelled before its first step, when no ``finally`` inside it would run)."""
        self._task = asyncio.ensure_future(self._produce())
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        if not self._ended:
            self._put_end(error_event(self._error_body(asyncio.CancelledError())))
        self._queue.put_nowait(None)
        if self._on_finish is not None:
            self._on_finish()

    def _put_end(self, event: bytes) -> None:
        self._ended = True
        self._queue.put_nowait(event)

    async def _on_segment(self, done: SegmentDone) -> None:
        delta = self._deltas.next(done.text)
        if delta is not None and done.pieces:
            self._queue.put_nowait(
                delta_event(delta, done.pieces[0].start_s, done.pieces[-1].end_s)
            )

    async def _produce(self) -> None:
        try:
            transcription = await self._run(self._on_segment)
            done = done_event(self._done_fields(transcription))
        except BaseException as exc:
            self._put_end(error_event(self._error_body(exc)))
            if not isinstance(exc, Exception):
                raise  # cancellation: the client is still told why the stream ends
            return
        if self._deltas.count == 0:
            # Nothing was reported while it ran (a cache hit, split channels): replay.
            for seg in transcription.segments:
                delta = self._deltas.next(seg.text)
                if delta is not None:
                    self._queue.put_nowait(delta_event(delta, seg.start_s, seg.end_s))
        self._put_end(done)

    async def events(self) -> AsyncIterator[bytes]:
        if self._task is None:
            self.start()
        try:
            while (event := await self._queue.get()) is not None:
                yield event
        finally:
            # The client went away mid-stream: its transcription's work is not wanted.
            if self._task is not None and not self._task.done():
                self._task.cancel()
