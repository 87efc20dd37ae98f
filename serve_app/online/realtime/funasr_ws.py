"""FunASR's runtime websocket protocol (``/funasr``), so FunASR's own clients (HTML5,
Python, Java, C++) connect unchanged.

A client sends a JSON start message ``{mode: "online" | "offline" | "2pass", wav_name,
wav_format: "pcm", audio_fs, is_speaking: true, hotwords, itn, chunk_size, ...}``, then
binary PCM16 frames, then ``{is_speaking: false}``; it may start the next file on the same
connection with another start message. The server answers per utterance:

- ``2pass``: ``{mode: "2pass-online", text}`` while someone speaks (the new words only:
  clients append them), then ``{mode: "2pass-offline", text, timestamp, stamp_sents}``
  with the utterance's final text (clients replace the online words with it);
- ``online``: only the ``online`` words, the final's tail added when it extends them;
- ``offline``: one ``offline`` message per utterance.

After ``is_speaking: false`` every utterance left is decoded and the last message carries
``is_final: true`` and ``is_end: true`` (what FunASR's current Python client waits for; older
clients read ``is_final``). ``chunk_size``, ``chunk_interval`` and the look-backs set
FunASR's streaming model's chunking; here partials come every ``partial_interval_s``
instead, and they are ignored. A problem gets ``{error, is_final: false}``; the session
goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from starlette.websockets import WebSocket

from serve_app.core.errors import AsrError, InvalidRequestError
from serve_app.core.text import is_unspaced
from serve_app.core.types import RecognitionOptions
from serve_app.online.realtime.audio_in import LiveDecoder, LiveFormat
from serve_app.online.realtime.backend import (
    LiveBackend,
    Outbox,
    default_turns,
    parse_message,
    session_limits,
)
from serve_app.online.realtime.session import LiveEvent, LiveSession

logger = logging.getLogger(__name__)

MODES = ("online", "offline", "2pass")


def stable_prefix(text: str) -> str:
    """``text`` without its last word (or last character, for unspaced scripts): the word
    still being spoken may change in the next hypothesis."""
    text = text.rstrip()
    if not text:
        return ""
    if is_unspaced(text[-1]):
        return text[:-1]
    cut = text.rfind(" ")
    return text[: cut + 1] if cut >= 0 else ""


class FunasrSession:
    def __init__(self, websocket: WebSocket, backend: LiveBackend) -> None:
        self.ws = websocket
        self.backend = backend
        self.settings = backend.settings
        self.model = backend.resolve_model(websocket.query_params.get("model"))
        self.mode = "2pass"
        # Unique across ingress replicas: the streaming replica keeps states by it.
        self.session_id = "funasr_" + uuid.uuid4().hex[:20]
        self.wav_name = "microphone"
        self.options = RecognitionOptions()
        self.decoder = LiveDecoder(LiveFormat("pcm16", 16_000))
        self.live: LiveSession | None = None
        self.outbox: Outbox | None = None
        self.sent_online: dict[str, str] = {}  # item -> online text already sent
        self.last_partial: dict[str, str] = {}  # item -> its latest partial, whole
        # The last character of the text the client holds (finals, and the online
        # words of an utterance after them): clients append, so a spaced script needs
        # the space between utterances from us.
        self.tail = ""
        self.pending_end = False

    async def run(self) -> None:
        self.outbox = Outbox(self.ws.send_text, self.settings.max_queued_events)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(
                        self.ws.receive(), timeout=self.settings.idle_timeout_s
                    )
                except TimeoutError:
                    if self.live is not None and self.live.busy:
                        continue
                    self._send({"error": "session_idle_timeout", "is_final": False})
                    return
                if message["type"] == "websocket.disconnect":
                    return
                if self.outbox.failed is not None:
                    return
                try:
                    if message.get("bytes") is not None:
                        await self._audio(message["bytes"])
                    elif message.get("text") is not None:
                        await self._control(message["text"])
                except AsrError as exc:
                    self._send({"error": exc.message, "code": exc.code, "is_final": False})
        finally:
            if self.live is not None:
                await self.live.close()
            await self.outbox.close(flush=True)
            try:
                await self.ws.close()
            except RuntimeError:
                pass

    async def _control(self, text: str) -> None:
        message = parse_message(text, self.settings)
        if message.get("is_speaking") is False:
            await self._end_of_input()
            return
        if "mode" in message or self.live is None:
            await self._start(message)

    async def _start(self, message: dict[str, Any]) -> None:
        mode = message.get("mode", self.mode)
        if mode not in MODES:
            raise InvalidRequestError(f"mode must be one of {MODES}, got {mode!r}", param="mode")
        wav_format = message.get("wav_format", "pcm")
        if wav_format != "pcm":
            raise InvalidRequestError(
                f"wav_format {wav_format!r}: this server takes raw PCM16 (pcm) on this "
                "socket; send files to POST /v1/audio/transcriptions",
                param="wav_format",
            )
        rate = message.get("audio_fs", 16_000)
        if not isinstance(rate, int) or not 8_000 <= rate <= 48_000:
            raise InvalidRequestError(f"audio_fs {rate!r} is not supported", param="audio_fs")
        if self.live is not None:
            await self.live.finish()
            await self.live.close()
        self.mode = mode
        self.wav_name = str(message.get("wav_name", self.wav_name))
        self.options = RecognitionOptions(hotwords=_hotwords(message.get("hotwords")))
        self.decoder = LiveDecoder(LiveFormat("pcm16", rate))
        self.sent_online.clear()
        self.last_partial.clear()
        self.tail = ""
        self.live = LiveSession(
            decode_final=self._final,
            decode_partial=self._partial if mode != "offline" and self.settings.partials else None,
            emit=self._on_event,
            limits=session_limits(self.settings),
            turns=default_turns(self.settings),
            end_partial=lambda item_id: self.backend.end_partial(self._partial_key(item_id)),
        )

    async def _audio(self, data: bytes) -> None:
        if self.live is None:
            raise InvalidRequestError("send the start message (mode, wav_name, ...) before audio")
        if len(data) > self.settings.max_event_bytes:
            raise InvalidRequestError("audio frame over the size limit")
        await self.live.append(self.decoder.decode(data))

    async def _end_of_input(self) -> None:
        if self.live is None:
            self._send(
                {
                    "mode": self._final_mode(),
                    "wav_name": self.wav_name,
                    "text": "",
                    "is_final": True,
                    "is_end": True,
                }
            )
            return
        live = self.live
        self.pending_end = True
        await live.finish()
        self.pending_end = False
        self._send(
            {
                "mode": self._final_mode(),
                "wav_name": self.wav_name,
                "text": "",
                "timestamp": "[]",
                "stamp_sents": [],
                "is_final": True,
                "is_end": True,
            }
        )
        await live.close()
        self.live = None

    def _final_mode(self) -> str:
        return {"2pass": "2pass-offline", "online": "online", "offline": "offline"}[self.mode]

    async def _final(self, samples):
        return await self.backend.decode_final(samples, model=self.model, options=self.options)

    async def _partial(self, samples, item_id: str):
        return await self.backend.decode_partial(
            samples, model=self.model, options=self.options, key=self._partial_key(item_id)
        )

    def _partial_key(self, item_id: str) -> str:
        return f"{self.session_id}/{item_id}"

    async def _on_event(self, event: LiveEvent) -> None:
        online_mode = "2pass-online" if self.mode == "2pass" else "online"
        if event.kind == "partial":
            sent = self.sent_online.get(event.item_id, "")
            self.last_partial[event.item_id] = event.text
            stable = stable_prefix(event.text)
            if stable.startswith(sent) and len(stable) > len(sent):
                self.sent_online[event.item_id] = stable
                new = stable[len(sent) :]
                self._send(
                    {
                        "mode": online_mode,
                        "wav_name": self.wav_name,
                        "text": self._spaced(new) if not sent else new,
                        "is_final": False,
                    }
                )
        elif event.kind == "final":
            sent = self.sent_online.pop(event.item_id, "")
            last_partial = self.last_partial.pop(event.item_id, "")
            if self.mode == "online":
                # The final's words after those sent; when the final reads differently
                # (a streaming model's partials, or a re-decode), the last partial's
                # held-back word instead: sent text is never taken back, nor the end lost.
                whole = event.text if event.text.startswith(sent) else last_partial
                if whole.startswith(sent) and len(whole) > len(sent):
                    rest = whole[len(sent) :]
                    self._send(
                        {
                            "mode": "online",
                            "wav_name": self.wav_name,
                            "text": self._spaced(rest) if not sent else rest,
                            "is_final": False,
                        }
                    )
                if event.text:
                    self.tail = event.text[-1]
                return
            self._send(
                {
                    "mode": self._final_mode(),
                    "wav_name": self.wav_name,
                    "text": self._spaced(event.text),
                    "is_final": False,
                    **_timestamps(event),
                }
            )
            if event.text:
                self.tail = event.text[-1]
        elif event.kind == "failed":
            self.sent_online.pop(event.item_id, None)
            self.last_partial.pop(event.item_id, None)
            error = event.error
            self._send(
                {
                    "error": error.message if error else "transcription failed",
                    "code": error.code if error else "recognition_failed",
                    "is_final": False,
                }
            )

    def _spaced(self, text: str) -> str:
        """``text`` with a leading space when it follows held text of a spaced script."""
        if not text or not self.tail or self.tail.isspace() or text[0].isspace():
            return text
        return text if is_unspaced(self.tail) or is_unspaced(text[0]) else " " + text

    def _send(self, message: dict) -> None:
        assert self.outbox is not None
        self.outbox.put(json.dumps(message, ensure_ascii=False))


def _hotwords(value: Any) -> tuple[str, ...]:
    """FunASR clients send hotwords as ``"w1 w2"``, ``"w1,w2"`` or a JSON dict of weights."""
    if not value:
        return ()
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return tuple(str(k) for k in parsed)
        return tuple(w for w in value.replace(",", " ").split() if w)
    if isinstance(value, dict):
        return tuple(str(k) for k in value)
    if isinstance(value, list):
        return tuple(str(w) for w in value)
    raise InvalidRequestError("hotwords must be a string or an object", param="hotwords")


def _timestamps(event: LiveEvent) -> dict:
    """FunASR's ``timestamp`` (``[[start_ms, end_ms], ...]`` as a string) and
    ``stamp_sents`` from the final's segments, in the stream's time."""
    result = event.transcription
    if result is None:
        return {"timestamp": "[]", "stamp_sents": []}
    offset_ms = event.at_ms
    sents = []
    stamps = []
    for seg in result.segments:
        start, end = offset_ms + round(seg.start_s * 1000), offset_ms + round(seg.end_s * 1000)
        words = [
            [offset_ms + round(w.start_s * 1000), offset_ms + round(w.end_s * 1000)]
            for w in getattr(seg, "words", ()) or ()
        ] or [[start, end]]
        stamps.extend(words)
        sents.append(
            {"text_seg": seg.text, "punc": "", "start": start, "end": end, "ts_list": words}
        )
    return {"timestamp": json.dumps(stamps), "stamp_sents": sents}
