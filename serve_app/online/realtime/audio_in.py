"""Live audio formats: raw PCM16 (little-endian, mono) at 24, 16 or 8 kHz, G.711 mu-law
and A-law (8 kHz), each turned into the 16 kHz float32 stream the VAD and models take.

Names: OpenAI's GA ``{"type": "audio/pcm", "rate": 24000}``, ``{"type": "audio/pcmu"}``,
``{"type": "audio/pcma"}`` and the beta names ``pcm16``, ``g711_ulaw``, ``g711_alaw``.
Resampling is soxr's streaming resampler (the file decoder's), one state per session, so
chunk boundaries leave no seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import soxr

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.errors import InvalidRequestError

Encoding = Literal["pcm16", "ulaw", "alaw"]
PCM_RATES_HZ = (24_000, 16_000, 8_000)


@dataclass(frozen=True)
class LiveFormat:
    encoding: Encoding = "pcm16"
    rate_hz: int = 24_000

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def to_json(self) -> dict:
        """The GA ``session.audio.input.format`` object."""
        if self.encoding == "pcm16":
            return {"type": "audio/pcm", "rate": self.rate_hz}
        return {"type": "audio/pcmu" if self.encoding == "ulaw" else "audio/pcma"}


def parse_format(value: Any, *, param: str) -> LiveFormat:
    """A GA format object or a beta format name."""
    if isinstance(value, str):
        beta = {"pcm16": LiveFormat(), "g711_ulaw": LiveFormat("ulaw", 8000)}
        beta["g711_alaw"] = LiveFormat("alaw", 8000)
        if value in beta:
            return beta[value]
        raise InvalidRequestError(
            f"unknown audio format {value!r}; use pcm16, g711_ulaw or g711_alaw", param=param
        )
    if not isinstance(value, dict):
        raise InvalidRequestError("the audio format must be an object", param=param)
    kind = value.get("type")
    if kind == "audio/pcm":
        rate = value.get("rate", 24_000)
        if rate not in PCM_RATES_HZ:
            raise InvalidRequestError(
                f"audio/pcm rate {rate!r} is not supported; use one of {list(PCM_RATES_HZ)}",
                param=f"{param}.rate",
            )
        return LiveFormat("pcm16", int(rate))
    if kind in ("audio/pcmu", "audio/pcma"):
        return LiveFormat("ulaw" if kind == "audio/pcmu" else "alaw", 8000)
    raise InvalidRequestError(
        f"unknown audio format type {kind!r}; use audio/pcm, audio/pcmu or audio/pcma",
        param=f"{param}.type",
    )


def _ulaw_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.float32) / 32768.0


def _alaw_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.float32) / 32768.0


_TABLES = {"ulaw": _ulaw_table(), "alaw": _alaw_table()}


class LiveDecoder:
    """Bytes of one format in, 16 kHz float32 out, chunk by chunk."""

    def __init__(self, fmt: LiveFormat) -> None:
        self.format = fmt
        self._resampler = (
            soxr.ResampleStream(fmt.rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
            if fmt.rate_hz != SAMPLE_RATE_HZ
            else None
        )

    def decode(self, data: bytes) -> np.ndarray:
        if self.format.encoding == "pcm16":
            if len(data) % 2:
                raise InvalidRequestError(
                    f"PCM16 audio needs an even number of bytes, got {len(data)}",
                    param="audio",
                )
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = _TABLES[self.format.encoding][np.frombuffer(data, dtype=np.uint8)]
        if self._resampler is None:
            return samples
        return self._resampler.resample_chunk(samples)
