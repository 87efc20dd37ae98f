"""Conversations of 2-5 espeak-ng voices with known speaker turns, made at test time.

Each talker is an espeak-ng voice (and variant) at its own pitch and rate, drawn from one
of :data:`VOICE_SETS`; turns alternate between talkers (no talker twice in a row), last
2-10 s (1-3 sentences), and are separated by pauses (0.4-1.2 s unless told); one quick
exchange of short replies ("Okay.", "Sure.") 0.2-0.35 s apart sits somewhere in the
middle. With ``overlap_share`` that share of the turns starts 0.3-1.0 s before the previous
one ends (both voices mixed); otherwise nothing overlaps. The reference times are those of
the synthesized speech itself (each utterance trimmed of espeak's own leading and trailing
silence), so they are exact.

Used by ``scripts/diarization_eval.py``, ``scripts/stage_cost.py`` and the speaker tests.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
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

# Disjoint voice sets (no espeak-ng variant in two sets), so a clustering tuned on one set
# is reported on another. "dev" tuned the average-linkage threshold (up to 2026-12);
# "tune" tuned the speaker-count estimate; "heldout" was used for nothing but the report,
# and holds the probe: two male American variants at different speeds (GE2E
# centroid distance 0.21) and a female British voice. Every pair in a set is >= 0.18
# apart in GE2E's centroid cosine distance (8 sentences each); the espeak-ng variants
# not chosen are one voice to GE2E with one of these (< 0.1), whatever their name.
VOICE_SETS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "dev": VOICES,
    "tune": (
        ("en-us+Andy", 50, 150),
        ("en-us+Storm", 50, 150),
        ("en+Annie", 60, 160),
        ("en-029+david", 45, 150),
        ("en-gb-x-gbclan+f5", 65, 175),
        ("en+klatt3", 50, 160),
    ),
    "heldout": (
        ("en-us+m3", 40, 130),
        ("en-us+m7", 50, 190),
        ("en-gb-x-rp+f4", 75, 150),
        ("en-us-nyc+Lee", 50, 160),
        ("en+edward", 45, 150),
        ("en-us+whisperf", 50, 150),
    ),
}

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
    voices: Sequence[tuple[str, int, int]] = VOICES,
    pause_s: tuple[float, float] = (0.4, 1.2),
    overlap_share: float = 0.0,
) -> Conversation:
    """One conversation (seeded: the same arguments give the same samples).

    ``voices``: the talkers are drawn from these (in this order when there are exactly
    ``num_speakers``); ``pause_s``: the range of pauses between turns; ``overlap_share``:
    the share of turns that start 0.3-1.0 s before the previous turn ends."""
    if not 2 <= num_speakers <= len(voices):
        raise ValueError(f"num_speakers must be 2..{len(voices)}")
    rng = random.Random(seed * 1009 + num_speakers)
    chosen = (
        tuple(voices) if len(voices) == num_speakers else tuple(rng.sample(voices, num_speakers))
    )
    num_turns = num_turns or rng.randint(3 * num_speakers, 3 * num_speakers + 2)
    if num_turns < 2 * num_speakers:
        raise ValueError(f"every talker speaks twice: num_turns must be >= {2 * num_speakers}")
    order = _speaker_order(rng, num_speakers, num_turns)
    quick_at = rng.randrange(1, num_turns) if quick_exchange else -1

    placed: list[tuple[int, np.ndarray]] = []  # (first sample, samples)
    turns: list[Turn] = []
    clock = 0  # the end of the last utterance, in samples

    def add(speaker: int, text: str, samples: np.ndarray, gap_s: float) -> None:
        # gap_s < 0: the utterance starts before the previous one ends (never before it starts).
        nonlocal clock
        start = clock + round(gap_s * SAMPLE_RATE_HZ) if placed else 0
        if gap_s < 0:
            start = max(start, placed[-1][0] + SAMPLE_RATE_HZ // 2)
        placed.append((start, samples.astype(np.float32)))
        turns.append(
            Turn(speaker, start / SAMPLE_RATE_HZ, (start + len(samples)) / SAMPLE_RATE_HZ, text)
        )
        clock = max(clock, start + len(samples))

    for index, speaker in enumerate(order):
        if index == quick_at:
            a = turns[-1].speaker if turns else order[0]
            b = speaker if speaker != a else (a + 1) % num_speakers
            for j, reply in enumerate(rng.sample(QUICK_REPLIES, 4)):
                who = (b, a)[j % 2]
                add(who, reply, _speak(reply, chosen[who], tmp_dir), rng.uniform(0.2, 0.35))
            if turns[-1].speaker == speaker:
                speaker = rng.choice([s for s in range(num_speakers) if s != speaker])
        # 1-3 sentences (each spoken alone, 0.15-0.3 s apart), within 2-10 s.
        sentences = rng.sample(ALL_SENTENCES, 3)
        parts = [_speak(sentences[0], chosen[speaker], tmp_dir)]
        texts = [sentences[0]]
        for more in sentences[1:]:
            total = sum(len(p) for p in parts)
            if total >= 2 * SAMPLE_RATE_HZ and (len(texts) >= rng.randint(1, 3)):
                break
            extra = _speak(more, chosen[speaker], tmp_dir)
            if total + len(extra) + 0.3 * SAMPLE_RATE_HZ > 10 * SAMPLE_RATE_HZ:
                break
            parts += [np.zeros(round(rng.uniform(0.15, 0.3) * SAMPLE_RATE_HZ), np.float32), extra]
            texts.append(more)
        text, samples = " ".join(texts), np.concatenate(parts)[: 10 * SAMPLE_RATE_HZ]
        gap_s = rng.uniform(*pause_s)
        # (no draw without overlaps: the conversations of earlier figures stay the same)
        if overlap_share > 0 and turns and rng.random() < overlap_share:
            gap_s = -rng.uniform(0.3, 1.0)
        add(speaker, text, samples, gap_s)
    mixed = np.zeros(clock, np.float32)
    for start, samples in placed:
        mixed[start : start + len(samples)] += samples
    return Conversation(mixed, tuple(turns), chosen)


def reference_annotation(conversation: Conversation):
    """The turns as a ``pyannote.core.Annotation`` (labels ``S0``, ``S1``, ...)."""
    from pyannote.core import Annotation, Segment

    reference = Annotation()
    for turn in conversation.turns:
        reference[Segment(turn.start_s, turn.end_s)] = f"S{turn.speaker}"
    return reference
