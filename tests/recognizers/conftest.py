"""Fixtures for the FunASR backend tests: tiny random-weight models and test audio.

The models come from ``serve_app.tools.random_models`` (imported, not run as a
process); their transcripts are gibberish, which is all batching checks need.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.speech import SENTENCES, have_espeak, synthesize


def noise_segments(durations_s: list[float], *, seed: int = 0) -> list[np.ndarray]:
    """Speech-like noise: white noise under a 4 Hz syllable-rate envelope, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for duration_s in durations_s:
        n = int(duration_s * 16_000)
        t = np.arange(n) / 16_000
        envelope = 0.5 * (1.0 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)))
        out.append((0.1 * envelope * rng.standard_normal(n)).astype(np.float32))
    return out


# Different lengths on purpose: padding is what batching can get wrong.
SEGMENT_DURATIONS_S = [0.6, 1.3, 2.2, 3.1, 4.4, 5.0, 1.9, 0.9]


@pytest.fixture(scope="session")
def noise_audio() -> list[np.ndarray]:
    return noise_segments(SEGMENT_DURATIONS_S)


@pytest.fixture(scope="session")
def speech_audio(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Spoken sentences (espeak-ng), cut to different lengths."""
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    tmp = tmp_path_factory.mktemp("tts")
    out = []
    for i, sentence in enumerate(SENTENCES[:8]):
        samples = synthesize(sentence, tmp)
        out.append(samples[: max(1, int(len(samples) * (0.35 + 0.09 * i)))])
    return out
