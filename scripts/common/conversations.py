"""Conversations of 2-4 espeak-ng voices with known speaker turns, made at test time.

Each talker is an espeak-ng voice (and variant) at its own pitch and rate; turns alternate
between talkers (no talker twice in a row), last 2-10 s (1-3 sentences), and are
separated by 0.4-1.2 s pauses; one quick exchange of short replies ("Okay.", "Sure.")
0.2-0.35 s apart sits somewhere in the middle. Nothing overlaps. The reference times are
those of the synthesized speech itself (each utterance trimmed of espeak's own leading
and trailing silence), so they are exact.

Used by ``scripts/diarization_eval.py``, ``scripts/stage_cost.py`` and the speaker tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.tools.speech import SENTENCES, synthesize

SAMPLE_RATE_HZ = 16_000

# (espeak-ng voice, pitch 0-99, words per minute): talkers that differ. Chosen by GE2E
# distance (measured on 8 sentences each): espeak-ng's male variants (en-us, en-gb,
# en-gb-scotland, en-029, +m3, +m7, +croak) are one voice to a speaker encoder whatever
# the pitch (centroid cosine distances 0.02-0.14, against 0.18-0.46 between these five),
# and so are +f3 / +f4 and the klatt family among themselves. mbrola voices are left out
# (a separate Debian package).
VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us", 45, 160),
    ("en-us+f3", 70, 165),
    ("en+klatt", 50, 155),
    ("en-gb-x-rp+f2", 80, 170),
    ("en-us+whisper", 50, 150),
)

EXTRA_SENTENCES = [
    "I would like to check the status of my order from last week.",
    "Could you tell me the reference number on your invoice?",
    "The package should arrive within three working days.",
    "I have already restarted the router twice this morning.",
    "Let me transfer you to the billing department.",
    "Thank you for waiting, I have found your account.",
    "We can offer you a refund or a replacement, whichever you prefer.",
    "The technician will visit on Monday between nine and twelve.",
    "Is there anything else I can help you with today?",
    "I was charged twice for the same subscription.",
]
QUICK_REPLIES = ["Okay.", "Sure.", "Right, thanks.", "Yes, please.", "Got it.", "No problem."]
ALL_SENTENCES = [*SENTENCES, *EXTRA_SENTENCES]


@dataclass(frozen=True)
class Turn:
    speaker: int  # index into Conversation.voices
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Conversation:
    samples: np.ndarray  # 16 kHz mono float32
    turns: tuple[Turn, ...]
    voices: tuple[tuple[str, int, int], ...]

    @property
    def num_speakers(self) -> int:
        return len({t.speaker for t in self.turns})

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


def trim_silence(samples: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Drop leading and trailing samples quieter than ``threshold`` (espeak pads ~0.1 s)."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if len(loud) == 0:
        return samples[:0]
    return samples[loud[0] : loud[-1] + 1]


_SPOKEN: dict[tuple[str, tuple[str, int, int], Path], np.ndarray] = {}


def _speak(text: str, voice: tuple[str, int, int], tmp_dir: Path) -> np.ndarray:
    """One utterance, trimmed; memoised (espeak-ng and sox cost most of a conversation)."""
    key = (text, voice, tmp_dir)
    if key not in _SPOKEN:
        name, pitch, wpm = voice
        samples = synthesize(text, tmp_dir, voice=name, speed_wpm=wpm, pitch=pitch)
        _SPOKEN[key] = trim_silence(samples)
    return _SPOKEN[key]


def _speaker_order(rng: random.Random, num_speakers: int, num_turns: int) -> list[int]:
    """No talker twice in a row; every talker at least twice."""
    while True:
        order = [rng.randrange(num_speakers)]
        while len(order) < num_turns:
            order.append(rng.choice([s for s in range(num_speakers) if s != order[-1]]))
        if all(order.count(s) >= 2 for s in range(num_speakers)):
            return order


def make_conversation(
    num_speakers: int,
    seed: int,
    tmp_dir: Path,
    *,
    num_turns: int | None = None,
    quick_exchange: bool = True,
) -> Conversation:
    """One conversation (seeded: the same arguments give the same samples)."""
    if not 2 <= num_speakers <= len(VOICES):
        raise ValueError(f"num_speakers must be 2..{len(VOICES)}")
    rng = random.Random(seed * 1009 + num_speakers)
    voices = tuple(rng.sample(VOICES, num_speakers))
    num_turns = num_turns or rng.randint(3 * num_speakers, 3 * num_speakers + 2)
    if num_turns < 2 * num_speakers:
        raise ValueError(f"every talker speaks twice: num_turns must be >= {2 * num_speakers}")
    order = _speaker_order(rng, num_speakers, num_turns)
    quick_at = rng.randrange(1, num_turns) if quick_exchange else -1

    pieces: list[np.ndarray] = []
    turns: list[Turn] = []
    clock = 0

    def add(speaker: int, text: str, samples: np.ndarray, pause_s: float) -> None:
        nonlocal clock
        if pieces:
            gap = np.zeros(round(pause_s * SAMPLE_RATE_HZ), np.float32)
            pieces.append(gap)
            clock += len(gap)
        pieces.append(samples.astype(np.float32))
        turns.append(
            Turn(speaker, clock / SAMPLE_RATE_HZ, (clock + len(samples)) / SAMPLE_RATE_HZ, text)
        )
        clock += len(samples)

    for index, speaker in enumerate(order):
        if index == quick_at:
            a = turns[-1].speaker if turns else order[0]
            b = speaker if speaker != a else (a + 1) % num_speakers
            for j, reply in enumerate(rng.sample(QUICK_REPLIES, 4)):
                who = (b, a)[j % 2]
                add(who, reply, _speak(reply, voices[who], tmp_dir), rng.uniform(0.2, 0.35))
            if turns[-1].speaker == speaker:
                speaker = rng.choice([s for s in range(num_speakers) if s != speaker])
        # 1-3 sentences (each spoken alone, 0.15-0.3 s apart), within 2-10 s.
        sentences = rng.sample(ALL_SENTENCES, 3)
        parts = [_speak(sentences[0], voices[speaker], tmp_dir)]
        texts = [sentences[0]]
        for more in sentences[1:]:
            total = sum(len(p) for p in parts)
            if total >= 2 * SAMPLE_RATE_HZ and (len(texts) >= rng.randint(1, 3)):
                break
            extra = _speak(more, voices[speaker], tmp_dir)
            if total + len(extra) + 0.3 * SAMPLE_RATE_HZ > 10 * SAMPLE_RATE_HZ:
                break
            parts += [np.zeros(round(rng.uniform(0.15, 0.3) * SAMPLE_RATE_HZ), np.float32), extra]
            texts.append(more)
        text, samples = " ".join(texts), np.concatenate(parts)[: 10 * SAMPLE_RATE_HZ]
        add(speaker, text, samples, rng.uniform(0.4, 1.2))
    return Conversation(np.concatenate(pieces), tuple(turns), voices)


def reference_annotation(conversation: Conversation):
    """The turns as a ``pyannote.core.Annotation`` (labels ``S0``, ``S1``, ...)."""
    from pyannote.core import Annotation, Segment

    reference = Annotation()
    for turn in conversation.turns:
        reference[Segment(turn.start_s, turn.end_s)] = f"S{turn.speaker}"
    return reference
