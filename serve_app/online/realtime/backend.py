"""What a live protocol handler needs of the ingress replica, and the parts both share:
the outbound queue, the idle timeout, the session count.

:class:`LiveBackend` is implemented by the ingress (serve_app.online.ingress): finals go
through the file pipeline with the ingress's retries, deadline and admission; partials
are single low-priority recognizer items. Tests pass a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from serve_app.config import RealtimeSettings
from serve_app.core.errors import InvalidRequestError, TooManySessionsError
from serve_app.core.transcript import Transcription
from serve_app.core.turns import TurnSettings
from serve_app.core.types import RecognitionOptions
from serve_app.online.realtime.session import SessionLimits

logger = logging.getLogger(__name__)


class LiveBackend(Protocol):
    settings: RealtimeSettings

    def resolve_model(self, model: str | None) -> str:
        """The canonical name of a served model (UnknownModelError otherwise)."""
        ...

    async def decode_final(
        self, samples: np.ndarray, *, model: str, options: RecognitionOptions
    ) -> Transcription: ...

    async def decode_partial(
        self, samples: np.ndarray, *, model: str, options: RecognitionOptions, key: str
    ) -> str | None: ...

    def end_partial(self, key: str) -> None:
        """The utterance ``key`` of ``decode_partial`` ended: free what its partials kept."""
        ...

    def session_slot(self) -> contextlib.AbstractContextManager[None]:
        """Held for a session's life; raises OverloadedError past the replica's cap."""
        ...


class SessionSlots:
    """The count of live sessions of one ingress replica, capped."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.open = 0
        self.total = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.open >= self.max_sessions:
            raise TooManySessionsError(
                f"this replica holds its maximum of {self.max_sessions} live sessions; retry later",
                retry_after_s=1.0,
            )
        self.open += 1
        self.total += 1
        try:
            yield
        finally:
            self.open -= 1


def session_limits(settings: RealtimeSettings) -> SessionLimits:
    return SessionLimits(
        partial_interval_s=settings.partial_interval_s,
        early_final_ms=settings.early_final_ms,
        max_buffer_s=settings.max_buffer_s,
        max_pending_finals=settings.max_pending_finals,
    )


def default_turns(settings: RealtimeSettings) -> TurnSettings:
    """OpenAI's server_vad defaults with this server's limits."""
    return TurnSettings(
        min_speech_ms=settings.min_speech_ms, max_turn_ms=int(settings.max_turn_s * 1000)
    )


def parse_message(text: str, settings: RealtimeSettings) -> dict[str, Any]:
    """A client's JSON message, or the InvalidRequestError that names what is wrong."""
    if len(text) > settings.max_event_bytes:
        limit = settings.max_event_bytes
        raise InvalidRequestError(f"message of {len(text)} bytes is over the {limit} limit")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"the message is not JSON: {exc.msg}") from None
    if not isinstance(message, dict):
        raise InvalidRequestError("the message must be a JSON object")
    return message


class ClientTooSlowError(Exception):
    """The client does not read its events: its queue is full."""


@dataclass
class Outbox:
    """Events to send, in order, by one task; bounded (a client that stops reading is
    closed instead of growing the replica's memory)."""

    send: Callable[[Any], Awaitable[None]]
    max_events: int

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())
        self.failed: BaseException | None = None

    def put(self, message: Any) -> None:
        if self.failed is not None:
            return
        if self._queue.qsize() >= self.max_events:
            self.failed = ClientTooSlowError(f"{self.max_events} events unread")
            return
        self._queue.put_nowait(message)

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            if message is None:
                return
            try:
                await self.send(message)
            except Exception as exc:  # the socket is gone
                self.failed = exc
                return

    async def close(self, *, flush: bool = True) -> None:
        if flush and self.failed is None:
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5.0)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
