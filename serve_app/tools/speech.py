"""Real speech of known text, made on the spot with espeak-ng (and sox for resampling).

The batch tuner's workload (:mod:`serve_app.tools.corpus`) is spoken this way, so it lives
with the tools; the scripts' corpora and the test suite (``tests/speech.py``) use it too.
Needs the ``espeak-ng`` and ``sox`` programs (``bash scripts/setup.sh --test`` installs them).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16_000

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call the customer service team tomorrow morning.",
    "The weather today is sunny with a light breeze from the west.",
    "We shipped the new release to production last night.",
    "Our meeting has been moved to Thursday afternoon.",
    "The train to the airport leaves every fifteen minutes.",
    "She ordered a large coffee and a blueberry muffin.",
    "The library closes early on public holidays.",
    "Remember to back up your files before the update.",
    "The children played football in the park after school.",
    "He paid the electricity bill with his credit card.",
    "Fresh vegetables are delivered to the market every day.",
    "The doctor asked him to drink more water.",
    "Our flight was delayed because of the heavy snow.",
    "The museum opens a new exhibition next month.",
    "Turn left at the traffic lights and then go straight.",
    "The engineers fixed the network problem in an hour.",
    "My sister is learning to play the piano.",
    "The bank will send you a new card by mail.",
    "They planted three apple trees in the garden.",
]


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def synthesize_wav(
    text: str, path: Path, *, voice: str = "en-us", speed_wpm: int = 150, pitch: int | None = None
) -> Path:
    """Speak ``text`` into a 16 kHz mono 16-bit WAV at ``path`` (``pitch``: espeak-ng's
    ``-p``, 0-99, default 50)."""
    raw = path.with_suffix(".raw.wav")
    pitch_args = [] if pitch is None else ["-p", str(pitch)]
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed_wpm), *pitch_args, "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        # -D: no dither, so the same text gives the same samples in every run.
        ["sox", str(raw), "-D", "-r", str(SAMPLE_RATE_HZ), "-c", "1", "-b", "16", str(path)],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    return path


def synthesize(text: str, tmp_dir: Path, **kwargs: Any) -> np.ndarray:
    """Speak ``text`` and return 16 kHz mono float32 samples (cached in ``tmp_dir``)."""
    digest = hashlib.sha1(f"{text}|{sorted(kwargs.items())}".encode()).hexdigest()[:16]
    path = synthesize_wav(text, tmp_dir / f"tts_{digest}.wav", **kwargs)
    samples, rate = sf.read(path, dtype="float32")
    assert rate == SAMPLE_RATE_HZ
    return np.asarray(samples, dtype=np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE_HZ), dtype=np.float32)


def concat_with_pauses(parts: list[np.ndarray], pause_s: float) -> np.ndarray:
    out: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i:
            out.append(silence(pause_s))
        out.append(part)
    return np.concatenate(out).astype(np.float32)
