"""Live-session test helpers: an ingress app served by uvicorn in a thread (websockets need
a real server for the official clients), speech as PCM16 chunks, event collectors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import soxr
import uvicorn

from scripts.common.service import free_port
from serve_app.core.segmentation import SpeechSegment
from serve_app.core.types import SegmentJob, SegmentTranscript
from serve_app.online.ingress import IngressServer
from tests.serve.fake_ingress import MODEL, FakeHandle, options


@contextmanager
def serve_in_thread(server: IngressServer) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of ``server``'s FastAPI app, until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        server.http_app(), host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio"
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not runner.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=10)


class FakeStages:
    """A VAD that returns the whole utterance as one segment and a recognizer that says
    how long each item is (``final 1.2s`` / ``partial 0.8s``), recording every job."""

    def __init__(self) -> None:
        self.jobs: list[SegmentJob] = []
        self.final_delay_s = 0.0

    async def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        return [SpeechSegment(0, len(samples) // 16)] if len(samples) else []

    async def transcribe(self, job: SegmentJob) -> SegmentTranscript:
        self.jobs.append(job)
        kind = "partial" if job.priority else "final"
        if kind == "final" and self.final_delay_s:
            await asyncio.sleep(self.final_delay_s)
        return SegmentTranscript(text=f"{kind} {job.duration_s:.1f}s")

    async def capabilities(self) -> dict:
        return {"language_detection": False, "word_timestamps": False, "translation": False}

    def ingress(self, **overrides) -> IngressServer:
        recognizer = FakeHandle(transcribe=self.transcribe, capabilities=self.capabilities)
        return IngressServer(
            FakeHandle(segments=self.segments), {MODEL: recognizer}, options(**overrides)
        )


def pcm16(samples: np.ndarray, rate_hz: int = 24_000) -> bytes:
    """16 kHz float32 -> PCM16 bytes at ``rate_hz`` (OpenAI's default is 24 kHz)."""
    if rate_hz != 16_000:
        samples = soxr.resample(samples, 16_000, rate_hz)
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def chunks(data: bytes, rate_hz: int, chunk_ms: int = 100) -> list[bytes]:
    size = rate_hz * 2 * chunk_ms // 1000
    return [data[i : i + size] for i in range(0, len(data), size)]


async def funasr_client(
    url: str,
    samples: np.ndarray,
    *,
    mode: str = "2pass",
    chunk_ms: int = 60,
    pace_s: float = 0.0,
    timeout_s: float = 20.0,
) -> list[dict]:
    """FunASR's runtime protocol as its Python client speaks it: the start message, binary
    PCM16 (16 kHz) in ``chunk_ms`` frames ``pace_s`` apart, the end; every answer up to the
    one with ``is_final``."""
    import json

    import websockets

    async with websockets.connect(url, subprotocols=["binary"]) as ws:
        start = {
            "mode": mode,
            "wav_name": "demo",
            "wav_format": "pcm",
            "is_speaking": True,
            "chunk_size": [5, 10, 5],
            "audio_fs": 16000,
            "hotwords": "",
            "itn": True,
        }
        await ws.send(json.dumps(start))
        for chunk in chunks(pcm16(samples, 16_000), 16_000, chunk_ms=chunk_ms):
            await ws.send(chunk)
            if pace_s:
                await asyncio.sleep(pace_s)
        await ws.send(json.dumps({"is_speaking": False}))
        messages = []
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            messages.append(message)
            if message.get("is_final"):
                return messages
