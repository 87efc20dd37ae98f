"""OpenAI's realtime transcription protocol over a websocket (``/v1/realtime``).

The official client connects unchanged (``client.realtime.connect(extra_query={"intent":
"transcription"})``). Client events: ``session.update`` (``session.type =
"transcription"``, ``session.audio.input.{format, transcription, turn_detection,
noise_reduction}``) and the beta ``transcription_session.update``;
``input_audio_buffer.append | commit | clear``. Server events: ``session.created``,
``session.updated``, ``input_audio_buffer.speech_started | speech_stopped | committed |
cleared``, ``conversation.item.input_audio_transcription.delta | completed | failed``,
``error``.

Deltas are append-only: each utterance's text is sent once, as one ``delta`` right before
its ``completed`` (the final is what the file path returns; a hypothesis is never sent as a
delta and then taken back). Revisable hypotheses while someone speaks are an opt-in
extension: with ``"item.input_audio_transcription.partial"`` in the session's ``include``
list, the server also sends ``conversation.item.input_audio_transcription.partial``
``{item_id, content_index, transcript}``: the whole utterance so far, replacing the
previous partial of that item. ``noise_reduction`` ``{type: "near_field" | "far_field"}``
runs a streaming spectral noise reducer on the session's audio before voice activity
detection and recognition (:mod:`serve_app.core.denoise`); ``null`` turns it off.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.core.denoise import PROFILES, NoiseReducer
from serve_app.core.errors import AsrError, InvalidRequestError, OverloadedError
from serve_app.core.turns import TurnSettings
from serve_app.core.types import RecognitionOptions
from serve_app.online.realtime.audio_in import LiveDecoder, LiveFormat, parse_format
from serve_app.online.realtime.backend import (
    LiveBackend,
    Outbox,
    default_turns,
    parse_message,
    session_limits,
)
from serve_app.online.realtime.session import LiveEvent, LiveSession

logger = logging.getLogger(__name__)

PARTIAL_INCLUDE = "item.input_audio_transcription.partial"
PARTIAL_EVENT = "conversation.item.input_audio_transcription.partial"
_TRANSCRIPTION = "conversation.item.input_audio_transcription"


def _event_id() -> str:
    return "event_" + uuid.uuid4().hex[:20]


def error_event(exc: AsrError, *, event_id: str | None = None, kind: str | None = None) -> dict:
    return {
        "type": "error",
        "event_id": _event_id(),
        "error": {
            "type": kind
            or ("server_error" if exc.code == "internal_error" else "invalid_request_error"),
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "event_id": event_id,
        },
    }


class OpenAIRealtimeSession:
    """One websocket connection speaking OpenAI's realtime transcription events."""

    def __init__(self, websocket: WebSocket, backend: LiveBackend) -> None:
        self.ws = websocket
        self.backend = backend
        settings = backend.settings
        self.settings = settings
        self.session_id = "sess_" + uuid.uuid4().hex[:20]
        self.format = LiveFormat()
        self.decoder = LiveDecoder(self.format)
        # ``?model=`` names OpenAI's realtime model (the client sends it); the
        # transcription model comes in the session's transcription.model. A served name
        # is taken, anything else means the default.
        try:
            self.model = backend.resolve_model(websocket.query_params.get("model"))
        except AsrError:
            self.model = backend.resolve_model(None)
        self.requested_model: str | None = None
        self.options = RecognitionOptions()
        self.turns: TurnSettings | None = default_turns(settings)
        self.include: list[str] = []
        self.beta = False
        self.received_audio = False
        self.noise: NoiseReducer | None = None
        self.outbox: Outbox | None = None
        self.live: LiveSession | None = None

    async def run(self) -> None:
        self.outbox = Outbox(self.ws.send_text, self.settings.max_queued_events)
        self.live = LiveSession(
            decode_final=self._final,
            decode_partial=self._partial if self.settings.partials else None,
            emit=self._on_event,
            limits=session_limits(self.settings),
            turns=self.turns,
            end_partial=lambda item_id: self.backend.end_partial(self._partial_key(item_id)),
        )
        self._send({"type": "session.created", "event_id": _event_id(), "session": self._session()})
        try:
            await self._receive_loop()
        finally:
            await self.live.close()
            await self.outbox.close(flush=True)

    async def _receive_loop(self) -> None:
        assert self.live is not None and self.outbox is not None
        while True:
            try:
                message = await asyncio.wait_for(
                    self.ws.receive(), timeout=self.settings.idle_timeout_s
                )
            except TimeoutError:
                if self.live.busy:
                    continue  # a decode is queued: waiting for it is not idling
                self._send(
                    error_event(
                        InvalidRequestError(
                            f"no event for {self.settings.idle_timeout_s:.0f} s: closing"
                        ),
                        kind="session_idle_timeout",
                    )
                )
                await self._close(1000)
                return
            if message["type"] == "websocket.disconnect":
                return
            if self.outbox.failed is not None:
                await self._close(1008, "client not reading its events")
                return
            text = message.get("text")
            if text is None:
                self._send(
                    error_event(
                        InvalidRequestError(
                            "binary frames are not part of this protocol: send JSON events"
                        )
                    )
                )
                continue
            await self._handle_text(text)

    async def _handle_text(self, text: str) -> None:
        event_id = None
        try:
            event = parse_message(text, self.settings)
            event_id = event.get("event_id")
            await self._dispatch(event)
        except AsrError as exc:
            self._send(error_event(exc, event_id=event_id))

    async def _dispatch(self, event: dict) -> None:
        assert self.live is not None
        kind = event.get("type")
        if kind in ("session.update", "transcription_session.update"):
            self.beta = kind == "transcription_session.update"
            self._update(event.get("session"))
            name = "transcription_session.updated" if self.beta else "session.updated"
            self._send({"type": name, "event_id": _event_id(), "session": self._session()})
        elif kind == "input_audio_buffer.append":
            audio = event.get("audio")
            if not isinstance(audio, str):
                raise InvalidRequestError("audio must be a base64 string", param="audio")
            try:
                data = base64.b64decode(audio, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequestError("audio is not valid base64", param="audio") from None
            samples = self.decoder.decode(data)
            if self.noise is not None:
                samples = self.noise.process(samples)
            self.received_audio = True
            await self.live.append(samples)
        elif kind == "input_audio_buffer.commit":
            await self.live.commit()
        elif kind == "input_audio_buffer.clear":
            await self.live.clear()
        else:
            raise InvalidRequestError(f"unknown event type {kind!r}", param="type")

    # -- the session's configuration -----------------------------------------------------

    def _update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise InvalidRequestError("session must be an object", param="session")
        if self.beta:
            audio_in = {
                "format": session.get("input_audio_format"),
                "transcription": session.get("input_audio_transcription"),
            }
            if "turn_detection" in session:
                audio_in["turn_detection"] = session["turn_detection"]
            audio_in = {k: v for k, v in audio_in.items() if v is not None or k == "turn_detection"}
            if "input_audio_noise_reduction" in session:
                audio_in["noise_reduction"] = session["input_audio_noise_reduction"]
        else:
            if session.get("type", "transcription") != "transcription":
                raise InvalidRequestError(
                    "this server transcribes only: session.type must be 'transcription'",
                    param="session.type",
                )
            audio_in = ((session.get("audio") or {}).get("input")) or {}
        if "include" in session:
            include = session.get("include") or []
            if not isinstance(include, list):
                raise InvalidRequestError("include must be a list", param="session.include")
            self.include = [str(x) for x in include]
        if audio_in.get("format") is not None:
            fmt = parse_format(audio_in["format"], param="session.audio.input.format")
            if fmt != self.format:
                if self.received_audio:
                    raise InvalidRequestError(
                        "the audio format cannot change once audio was sent in this session",
                        param="session.audio.input.format",
                    )
                self.format, self.decoder = fmt, LiveDecoder(fmt)
        transcription = audio_in.get("transcription")
        if isinstance(transcription, dict):
            self._transcription(transcription)
        if "turn_detection" in audio_in:
            self.turns = self._turn_detection(audio_in["turn_detection"])
            assert self.live is not None
            self.live.configure(self.turns)
        if "noise_reduction" in audio_in:
            self.noise = self._noise_reduction(audio_in["noise_reduction"])

    def _noise_reduction(self, value: Any) -> NoiseReducer | None:
        """``null`` (off) or ``{type: near_field | far_field}``; the same type again keeps the
        running reducer (its noise estimate), another type starts a new one."""
        if value is None:
            return None
        param = "session.audio.input.noise_reduction"
        kind = value.get("type") if isinstance(value, dict) else None
        if not isinstance(kind, str) or kind not in PROFILES:
            raise InvalidRequestError(
                f"noise_reduction type {kind!r} is not supported; use near_field, far_field "
                "or null",
                param=f"{param}.type",
            )
        if self.noise is not None and self.noise.profile_name == kind:
            return self.noise
        return NoiseReducer(kind)

    def _transcription(self, value: dict) -> None:
        model = value.get("model")
        if model is not None:
            self.model = self.backend.resolve_model(str(model))
            self.requested_model = str(model)
        language = value.get("language", self.options.language)
        prompt = value.get("prompt", self.options.prompt)
        keywords = value.get("keywords")
        hotwords = (
            tuple(str(k) for k in keywords) if isinstance(keywords, list) else self.options.hotwords
        )
        self.options = RecognitionOptions(
            language=str(language) if language else None,
            prompt=str(prompt) if prompt else None,
            hotwords=hotwords,
        )
        if self.live is not None:
            self.live.options_changed()

    def _turn_detection(self, value: Any) -> TurnSettings | None:
        if value is None:
            return None
        param = "session.audio.input.turn_detection"
        if not isinstance(value, dict):
            raise InvalidRequestError("turn_detection must be an object or null", param=param)
        kind = value.get("type", "server_vad")
        if kind != "server_vad":
            raise InvalidRequestError(
                f"turn_detection type {kind!r} is not supported; use server_vad or null",
                param=f"{param}.type",
            )
        current = self.turns or default_turns(self.settings)
        try:
            threshold = float(value.get("threshold", current.threshold))
            prefix = int(value.get("prefix_padding_ms", current.prefix_padding_ms))
            silence = int(value.get("silence_duration_ms", current.silence_duration_ms))
        except (TypeError, ValueError):
            raise InvalidRequestError(
                "turn_detection values must be numbers", param=param
            ) from None
        if not 0.0 < threshold < 1.0:
            raise InvalidRequestError("threshold must be in (0, 1)", param=f"{param}.threshold")
        if not 0 <= prefix <= 5000 or not 32 <= silence <= 10_000:
            raise InvalidRequestError(
                "prefix_padding_ms must be in [0, 5000] and silence_duration_ms in [32, 10000]",
                param=param,
            )
        return TurnSettings(
            threshold=threshold,
            prefix_padding_ms=prefix,
            silence_duration_ms=silence,
            min_speech_ms=current.min_speech_ms,
            max_turn_ms=current.max_turn_ms,
            hysteresis=min(current.hysteresis, threshold / 2),
        )

    def _session(self) -> dict:
        turn = (
            None
            if self.turns is None
            else {
                "type": "server_vad",
                "threshold": self.turns.threshold,
                "prefix_padding_ms": self.turns.prefix_padding_ms,
                "silence_duration_ms": self.turns.silence_duration_ms,
            }
        )
        noise = None if self.noise is None else {"type": self.noise.profile_name}
        transcription = {
            "model": self.requested_model or self.model,
            "language": self.options.language,
            "prompt": self.options.prompt or "",
        }
        if self.beta:
            return {
                "id": self.session_id,
                "object": "realtime.transcription_session",
                "input_audio_format": {"ulaw": "g711_ulaw", "alaw": "g711_alaw"}.get(
                    self.format.encoding, "pcm16"
                ),
                "input_audio_transcription": transcription,
                "turn_detection": turn,
                "input_audio_noise_reduction": noise,
                "include": self.include,
            }
        return {
            "type": "transcription",
            "id": self.session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": self.format.to_json(),
                    "transcription": transcription,
                    "turn_detection": turn,
                    "noise_reduction": noise,
                }
            },
            "include": self.include,
        }

    # -- decoding and events -------------------------------------------------------------

    async def _final(self, samples):
        return await self.backend.decode_final(samples, model=self.model, options=self.options)

    async def _partial(self, samples, item_id: str):
        if PARTIAL_INCLUDE not in self.include:
            return None
        return await self.backend.decode_partial(
            samples, model=self.model, options=self.options, key=self._partial_key(item_id)
        )

    def _partial_key(self, item_id: str) -> str:
        return f"{self.session_id}/{item_id}"

    async def _on_event(self, event: LiveEvent) -> None:
        base = {"event_id": _event_id(), "item_id": event.item_id}
        if event.kind == "started":
            self._send(
                {"type": "input_audio_buffer.speech_started", **base, "audio_start_ms": event.at_ms}
            )
        elif event.kind == "stopped":
            self._send(
                {"type": "input_audio_buffer.speech_stopped", **base, "audio_end_ms": event.at_ms}
            )
        elif event.kind == "committed":
            self._send(
                {
                    "type": "input_audio_buffer.committed",
                    **base,
                    "previous_item_id": event.previous_item_id,
                }
            )
        elif event.kind == "cleared":
            self._send({"type": "input_audio_buffer.cleared", "event_id": _event_id()})
        elif event.kind == "partial":
            self._send(
                {"type": PARTIAL_EVENT, **base, "content_index": 0, "transcript": event.text}
            )
        elif event.kind == "final":
            if event.text:
                self._send(
                    {
                        "type": f"{_TRANSCRIPTION}.delta",
                        **base,
                        "content_index": 0,
                        "delta": event.text,
                    }
                )
            seconds = (event.end_ms - event.at_ms) / 1000.0
            self._send(
                {
                    "type": f"{_TRANSCRIPTION}.completed",
                    **base,
                    "content_index": 0,
                    "transcript": event.text,
                    "usage": {"type": "duration", "seconds": round(seconds, 3)},
                }
            )
        elif event.kind == "failed":
            error = event.error or InvalidRequestError("transcription failed")
            body = error_event(error)["error"]
            if isinstance(error, OverloadedError):
                body["type"] = "rate_limit_error"
            self._send(
                {"type": f"{_TRANSCRIPTION}.failed", **base, "content_index": 0, "error": body}
            )

    def _send(self, event: dict) -> None:
        assert self.outbox is not None
        self.outbox.put(json.dumps(event, ensure_ascii=False))

    async def _close(self, code: int, reason: str = "") -> None:
        assert self.outbox is not None
        await self.outbox.close(flush=True)
        try:
            await self.ws.close(code=code, reason=reason)
        except (RuntimeError, WebSocketDisconnect):
            pass
