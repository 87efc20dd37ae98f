"""Audio bytes -> 16 kHz mono float32, once, with limits.

(Skeleton: the decoder is filled in by the audio work item; the constants and the
signature are fixed because every other module depends on them.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class AudioLimits:
    max_upload_bytes: int = 25 * 1024 * 1024
    max_duration_s: float = 4 * 3600.0


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE_HZ, contiguous
    source_sample_rate_hz: int
    source_format: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


def decode_audio(data: bytes, limits: AudioLimits = AudioLimits()) -> DecodedAudio:
    raise NotImplementedError
