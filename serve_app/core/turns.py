"""Turn detection for live audio: where speech starts, where a turn ends, where a long
turn must be cut. Pure logic over per-window speech probabilities (any streaming VAD).

It follows OpenAI's ``server_vad`` parameters: ``threshold`` (probability that counts as
speech), ``prefix_padding_ms`` (audio kept before the detected start), and
``silence_duration_ms`` (how long a pause ends the turn). A window below ``threshold -
hysteresis`` counts as silence, one in between keeps the current state (Silero's own
``neg_threshold`` rule), so a word's soft consonants do not end the turn. A start needs
``min_speech_ms`` of speech windows inside the turn before it is reported (a click or a
cough alone never becomes an utterance). A turn longer than ``max_turn_ms`` is cut at its
deepest pause in the last third (an item must fit one recognizer batch); speech goes on in
the next turn without a new start event.

Times are stream milliseconds: 0 is the first sample the session received.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TurnSettings:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 160
    max_turn_ms: int = 28_000
    hysteresis: float = 0.15


@dataclass(frozen=True)
class TurnEvent:
    """``started``: speech began at ``at_ms`` (reported once ``min_speech_ms`` of it was
    heard). ``stopped``: the turn's speech ended at ``at_ms`` (reported after
    ``silence_duration_ms`` of silence). ``cut``: the turn reached ``max_turn_ms`` and is
    committed up to ``at_ms``; the speech after it is a new turn, already started."""

    kind: Literal["started", "stopped", "cut"]
    at_ms: int


class TurnDetector:
    """Feed it the probabilities of consecutive windows of ``window_ms``; it returns the
    events each window completes. State is a handful of numbers: O(1) per window, except a
    cut, which looks back over the current turn's windows (at most ``max_turn_ms``)."""

    def __init__(self, settings: TurnSettings, *, window_ms: int) -> None:
        self.settings = settings
        self.window_ms = window_ms
        self.position_ms = 0  # end of the last window seen
        self.in_turn = False
        self.confirmed = False  # "started" was reported for the current turn
        self.turn_start_ms = 0
        self._speech_ms = 0
        self._last_speech_end_ms = 0
        self._silence_ms = 0
        # This turn's probabilities (for a cut at the deepest pause).
        self._probs: list[float] = []

    @property
    def silence_ms(self) -> int:
        """Silence heard since the current turn's last speech window (0 outside a turn)."""
        return self._silence_ms if self.in_turn else 0

    @property
    def speech_end_ms(self) -> int:
        """End of the current turn's last speech window: where it ends if it ends now."""
        return self._last_speech_end_ms

    def reset(self) -> None:
        """Forget the current turn (``input_audio_buffer.clear``); time goes on."""
        self.in_turn = False
        self.confirmed = False
        self._speech_ms = 0
        self._silence_ms = 0
        self._probs = []

    def push(self, probabilities: list[float]) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for p in probabilities:
            events.extend(self._window(float(p)))
        return events

    def _window(self, p: float) -> list[TurnEvent]:
        s = self.settings
        start_ms = self.position_ms
        self.position_ms += self.window_ms
        speech = p >= s.threshold
        silence = p < s.threshold - s.hysteresis
        if not self.in_turn:
            if not speech:
                return []
            self.in_turn, self.confirmed = True, False
            self.turn_start_ms = start_ms
            self._speech_ms = self._silence_ms = 0
            self._probs = []
        self._probs.append(p)
        events: list[TurnEvent] = []
        if speech:
            self._speech_ms += self.window_ms
            self._silence_ms = 0
            self._last_speech_end_ms = self.position_ms
        elif silence:
            self._silence_ms += self.window_ms
        if not self.confirmed and self._speech_ms >= s.min_speech_ms:
            self.confirmed = True
            events.append(TurnEvent("started", self.turn_start_ms))
        if self._silence_ms >= s.silence_duration_ms:
            if self.confirmed:
                events.append(TurnEvent("stopped", self._last_speech_end_ms))
            self.reset()  # an unconfirmed blip ends without an event
        elif self.confirmed and self.position_ms - self.turn_start_ms >= s.max_turn_ms:
            cut_ms = self._deepest_pause_ms()
            events.append(TurnEvent("cut", cut_ms))
            kept = (self.position_ms - cut_ms) // self.window_ms
            self._probs = self._probs[len(self._probs) - kept :] if kept else []
            self.turn_start_ms = cut_ms
            self._speech_ms = sum(self.window_ms for q in self._probs if q >= s.threshold)
        return events

    def _deepest_pause_ms(self) -> int:
        """End of the least speech-like window in the turn's last third (ties: the latest)."""
        n = len(self._probs)
        first = (2 * n) // 3
        best = min(range(first, n), key=lambda i: (self._probs[i], -i))
        return self.turn_start_ms + (best + 1) * self.window_ms
