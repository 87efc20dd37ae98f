"""Live speech over websockets: OpenAI's realtime transcription protocol (``/v1/realtime``)
and FunASR's runtime protocol (``/funasr``), both over one :class:`LiveSession` per
connection, whose utterances are items of the recognizer's cross-request batches.

    session.py      audio in, streaming VAD + turns, finals and partials out (no wire format)
    openai_ws.py    OpenAI's events          funasr_ws.py   FunASR's messages
    audio_in.py     PCM16 / G.711 to 16 kHz  backend.py     what a handler needs, outbox
    ingress_live.py the ingress's finals (file pipeline) and partials (low-priority items)
"""

from __future__ import annotations

import json
import logging
from typing import Literal

from starlette.websockets import WebSocket

from serve_app.core import observability
from serve_app.core.errors import AsrError, OverloadedError
from serve_app.online.realtime.backend import LiveBackend

logger = logging.getLogger(__name__)

Protocol = Literal["openai", "funasr"]
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


def choose_subprotocol(offered: list[str], protocol: Protocol) -> str | None:
    """The subprotocol to accept: a browser fails the connection when it offered some and
    the server picks none. OpenAI's browser clients offer ``realtime`` (plus the key as
    ``openai-insecure-api-key.<key>``, never echoed); FunASR's offer ``binary``."""
    preferred = "realtime" if protocol == "openai" else "binary"
    if preferred in offered:
        return preferred
    for name in offered:
        if not name.startswith(KEY_SUBPROTOCOL_PREFIX):
            return name
    return None


async def serve_socket(websocket: WebSocket, backend: LiveBackend, protocol: Protocol) -> None:
    """Accept one live connection and run it to its end; the replica's session cap and the
    live model's admission queue are checked first (an ``error`` event
    ``too_many_sessions`` or ``overloaded``, then close 1013: try again later)."""
    from serve_app.online.realtime.funasr_ws import FunasrSession
    from serve_app.online.realtime.openai_ws import OpenAIRealtimeSession, error_event

    subprotocol = choose_subprotocol(list(websocket.scope.get("subprotocols") or []), protocol)
    tags = {"protocol": protocol}
    try:
        slot = backend.session_slot()
        slot.__enter__()
    except OverloadedError as exc:
        observability.errors_total().inc(tags={"kind": exc.code, "stage": "live"})
        await websocket.accept(subprotocol=subprotocol)
        body = (
            error_event(exc, kind="rate_limit_error")
            if protocol == "openai"
            else {"error": exc.message, "code": exc.code, "is_final": True}
        )
        await websocket.send_text(json.dumps(body))
        await websocket.close(code=1013, reason=exc.code)
        return
    try:
        await websocket.accept(subprotocol=subprotocol)
        handler = (
            OpenAIRealtimeSession(websocket, backend)
            if protocol == "openai"
            else FunasrSession(websocket, backend)
        )
        observability.live_sessions().set(_open(backend), tags=tags)
        await handler.run()
    except AsrError as exc:
        logger.info("live session refused: %s", exc.message)
        await websocket.close(code=1008, reason=exc.message[:120])
    finally:
        slot.__exit__(None, None, None)
        observability.live_sessions().set(_open(backend), tags=tags)


def _open(backend: LiveBackend) -> int:
    slots = getattr(backend, "slots", None)
    return int(slots.open) if slots is not None else 0
