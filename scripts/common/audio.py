"""Spoken files of known text for the load scripts: espeak-ng sentences joined with pauses
(:mod:`serve_app.tools.speech`), held as WAV bytes ready to post."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serve_app.tools.speech import (
    SAMPLE_RATE_HZ,
    SENTENCES,
    concat_with_pauses,
    have_espeak,
    synthesize,
)


@dataclass(frozen=True)
class SpokenFile:
    """One file to send: its bytes (or a path read at each send: a large corpus stays on
    disk), its length and, when known, the text spoken in it."""

    name: str
    wav: bytes
    duration_s: float
    text: str = ""
    kind: str = ""  # e.g. "short" | "long" (the soak's mix)
    path: str = ""

    def data(self) -> bytes:
        return self.wav or Path(self.path).read_bytes()


def wav_bytes(
    samples: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ, fmt: str = "WAV", subtype: str = "PCM_16"
) -> bytes:
    """A file of float samples in [-1, 1] (frames x channels for more than one): 16-bit PCM
    WAV, or another soundfile ``fmt`` / ``subtype``."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), rate_hz, format=fmt, subtype=subtype)
    return buf.getvalue()


def with_white_noise(
    samples: np.ndarray, snr_db: float, seed: int, speech_power: float | None = None
) -> np.ndarray:
    """``samples`` plus white noise ``snr_db`` below the speech's power (by default the
    mean power of its 20 ms frames above -30 dB of the loudest: pauses do not count)."""
    x = np.asarray(samples, dtype=np.float64)
    if speech_power is None:
        frames = x[: len(x) // 320 * 320].reshape(-1, 320)
        power = np.mean(np.square(frames), axis=1) if len(frames) else np.zeros(1)
        loud = power[power > 1e-3 * power.max()]
        speech_power = float(loud.mean()) if len(loud) else 0.0
    noise = np.random.default_rng(seed).standard_normal(len(x)) * np.sqrt(
        speech_power / 10 ** (snr_db / 10)
    )
    return (x + noise).astype(np.float32)


def spoken(name: str, samples: np.ndarray, text: str = "", kind: str = "") -> SpokenFile:
    return SpokenFile(name, wav_bytes(samples), len(samples) / SAMPLE_RATE_HZ, text, kind)


def require_espeak() -> None:
    if not have_espeak():
        raise SystemExit("espeak-ng and sox make the speech: bash scripts/setup.sh --test")


def sentence_file(
    tmp: Path,
    name: str,
    texts: Sequence[str],
    *,
    pause_s: float = 0.8,
    speed_wpm: int = 150,
    kind: str = "",
) -> SpokenFile:
    """``texts`` spoken one after another with ``pause_s`` between them (one VAD segment
    each), the text known."""
    parts = [synthesize(text, tmp, speed_wpm=speed_wpm) for text in texts]
    return spoken(name, concat_with_pauses(parts, pause_s), " ".join(texts), kind)


def sentence_files(tmp: Path, count: int, sentences_per_file: int) -> list[SpokenFile]:
    """``count`` files of consecutive sentences, each file at its own rate and pause."""
    n = len(SENTENCES)
    return [
        sentence_file(
            tmp,
            f"file{i:03d}.wav",
            [SENTENCES[(i * sentences_per_file + j) % n] for j in range(sentences_per_file)],
            pause_s=0.6 + 0.2 * (i % 3),
            speed_wpm=140 + 10 * (i % 4),
        )
        for i in range(count)
    ]


def long_files(
    tmp: Path, durations_s: Sequence[float], *, seed: int = 0, kind: str = "long"
) -> list[SpokenFile]:
    """One file per duration: sentences at random with pauses of 0.4-2 s, cut to length,
    so segmenting, packing and the 30 s cap all have work."""
    rng = random.Random(seed)
    sentences = [synthesize(text, tmp) for text in SENTENCES]
    pause_choices_s = (0.4, 0.8, 1.2, 2.0)
    out = []
    for i, duration_s in enumerate(durations_s):
        target = int(duration_s * SAMPLE_RATE_HZ)
        pieces: list[np.ndarray] = []
        total = 0
        while total < target:
            pause = np.zeros(int(rng.choice(pause_choices_s) * SAMPLE_RATE_HZ), np.float32)
            pieces += [pause, sentences[rng.randrange(len(sentences))]]
            total += len(pieces[-2]) + len(pieces[-1])
        audio = np.concatenate(pieces)[:target]
        out.append(spoken(f"{kind}{i:02d}.wav", audio, kind=kind))
    return out


def read_files(paths: Sequence[Path]) -> list[SpokenFile]:
    """Audio files as they are (any format the service decodes; no text), read when sent."""
    return [SpokenFile(p.name, b"", float(sf.info(str(p)).duration), path=str(p)) for p in paths]
