"""Admission control in audio seconds: answer "retry later" at once instead of queueing
a request that would wait longer than ``max_queue_wait_s``.

Pure (no Ray, no HTTP; the clock is injected). One :class:`AdmissionController` per model
in each ingress replica tracks

- the queue: audio seconds of admitted requests not yet recognized (a request reserves
  its whole duration when admitted; once the VAD has run the reservation shrinks to its
  speech, and each recognized segment releases its share), and
- the drain rate: audio seconds released per second of *busy* time (time with a non-empty
  queue), an exponentially decayed average over the last ``rate_window_s`` of busy time.
  It is measured, never configured; until ``min_busy_s`` of busy time has been seen, the
  configured ``initial_rate_audio_s_per_s`` stands in for it, which bounds how much a cold
  start admits at once.

The rate is in speech seconds (what the recognizer is given), so audio the VAD has not seen
yet (a new request, requests reserved but not through the VAD) is counted at the share of
speech the VAD found in recent requests (an EWMA over requests; 1.0 before any): a
call-centre file is half silence, and counting it whole refused twice the traffic it should
and answered a ``Retry-After`` twice too long (over OpenAI's client's 120 s, so it never
retried). A new request's expected wait is its speech plus, of each admitted request's
queued speech, at most as much as its own (forwards take items in rounds across requests:
processor sharing), plus the requests not admitted yet, over the rate; over
``max_queue_wait_s`` it is rejected with a ``Retry-After`` of the time the queue needs to
drain to the point where it would fit. An idle model (empty queue) always
admits, so a stale or collapsed rate can never lock the service.

Several ingress replicas each run their own controllers over their own share of the
traffic: each sees the queue it sent and the rate at which its own requests drain, which
under Serve's balanced routing estimates the same wait as one global view would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.core.errors import OverloadedError


@dataclass(frozen=True)
class AdmissionPolicy:
    max_queue_wait_s: float = 60.0
    initial_rate_audio_s_per_s: float = 10.0
    rate_window_s: float = 30.0
    min_busy_s: float = 5.0
    max_retry_after_s: float = 600.0
    # Weight of one request's speech share in the running estimate.
    speech_share_alpha: float = 0.2


# The least share of speech assumed for audio the VAD has not seen.
MIN_SPEECH_SHARE = 0.1


class AdmissionController:
    def __init__(
        self,
        policy: AdmissionPolicy,
        *,
        model: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.model = model
        self._clock = clock
        self._queued_s = 0.0
        self._unseen_s = 0.0  # the part of _queued_s still waiting for the VAD (audio s)
        self.speech_share = 1.0  # speech / audio of recent requests, by their VAD
        self._decayed_sum_s = 0.0  # sum of released audio, each decayed by exp(-age/window)
        self._busy_s = 0.0
        self._drained_any = False
        self._last_t = clock()
        self._tickets: set[AdmissionTicket] = set()  # admitted, not closed

    # -- measurement ------------------------------------------------------------------
    def _advance(self) -> None:
        now = self._clock()
        dt = max(0.0, now - self._last_t)
        self._last_t = now
        if self._queued_s > 1e-9 and dt > 0:  # only busy time counts
            self._decayed_sum_s *= math.exp(-dt / self.policy.rate_window_s)
            self._busy_s += dt

    @property
    def queued_audio_s(self) -> float:
        return self._queued_s

    def measured_rate(self) -> float | None:
        """Audio seconds drained per busy second, or None before enough was seen.

        Busy time with nothing drained yet (a new ingress replica whose first requests
        wait for a recognizer being replaced after a node died) is not a rate of zero:
        it is no measurement, and the initial rate stands in until a segment completes."""
        self._advance()
        if self._busy_s < self.policy.min_busy_s or not self._drained_any:
            return None
        # Normalised so that a constant rate r over any busy time reads exactly r.
        norm = self.policy.rate_window_s * (
            1.0 - math.exp(-self._busy_s / self.policy.rate_window_s)
        )
        return self._decayed_sum_s / norm

    def rate(self) -> float:
        measured = self.measured_rate()
        return self.policy.initial_rate_audio_s_per_s if measured is None else measured

    def expected_wait_s(
        self, audio_s: float = 0.0, *, speech: bool = False, pending_audio_s: float = 0.0
    ) -> float:
        """Seconds until a new request of ``audio_s`` (not through the VAD yet, unless
        ``speech``) would be done. A forward takes items in rounds across requests
        (serve_app.online.batch_queue), so the recognizer's time is shared: an admitted
        request delays it by at most its own size (processor sharing). A 3 s file behind
        an hour-long upload waits for 3 s of it, not the hour (it was refused with
        Retry-After 184 s). ``pending_audio_s`` (requests not admitted yet) counts whole.
        ``audio_s`` 0: the whole queue."""
        self._advance()
        own_s = audio_s * (1.0 if speech else self.speech_share)
        queued = [ticket.speech_s for ticket in self._tickets]
        total_s = own_s + sum(min(q, own_s) if own_s > 0 else q for q in queued)
        total_s += pending_audio_s * self.speech_share
        if total_s <= 0:
            return 0.0
        rate = self.rate()
        return math.inf if rate <= 0 else total_s / rate

    # -- decisions --------------------------------------------------------------------
    def check(
        self, audio_s: float = 0.0, *, pending_audio_s: float = 0.0, speech: bool = False
    ) -> None:
        """Raise :class:`OverloadedError` (with ``retry_after_s``) if a request of
        ``audio_s`` would wait longer than allowed; reserves nothing. ``pending_audio_s``:
        the expected audio of requests that arrived before it and are not admitted yet
        (still uploading or decoding)."""
        self._advance()
        if self._queued_s <= 1e-9 and pending_audio_s <= 0:
            return  # idle: always admit
        wait_s = self.expected_wait_s(audio_s, speech=speech, pending_audio_s=pending_audio_s)
        limit_s = self.policy.max_queue_wait_s
        if wait_s <= limit_s:
            return
        retry_after_s = min(self.policy.max_retry_after_s, max(1.0, wait_s - limit_s))
        raise OverloadedError(
            f"model {self.model!r} is overloaded: expected queue wait "
            f"{_fmt_s(wait_s)} exceeds {limit_s:.0f} s; retry after {retry_after_s:.0f} s",
            retry_after_s=retry_after_s,
        )

    def admit(self, audio_s: float, *, speech: bool = False) -> AdmissionTicket:
        """Check, then reserve ``audio_s`` in the queue; the ticket releases it.
        ``speech``: the audio is speech already (a live utterance), no VAD will shrink it."""
        self.check(audio_s, speech=speech)
        self._advance()
        self._queued_s += audio_s
        if not speech:
            self._unseen_s += audio_s
        ticket = AdmissionTicket(self, audio_s, unseen=not speech)
        self._tickets.add(ticket)
        return ticket

    def _seen(self, audio_s: float, speech_s: float) -> None:
        """The VAD ran on a request reserved as ``audio_s``: ``speech_s`` of it is speech."""
        self._unseen_s = max(0.0, self._unseen_s - audio_s)
        if audio_s > 0:
            # Floored: files of silence still cost the VAD, and one burst of them must not
            # let anything through unweighed.
            share = min(1.0, max(MIN_SPEECH_SHARE, speech_s / audio_s))
            self.speech_share += self.policy.speech_share_alpha * (share - self.speech_share)

    def _release(self, audio_s: float, *, completed: bool, unseen: bool = False) -> None:
        self._advance()
        self._queued_s = max(0.0, self._queued_s - audio_s)
        if unseen:
            self._unseen_s = max(0.0, self._unseen_s - audio_s)
        if completed:
            self._decayed_sum_s += audio_s
            self._drained_any = self._drained_any or audio_s > 0


class AdmissionTicket:
    """One admitted request's share of the queue."""

    def __init__(
        self, controller: AdmissionController, audio_s: float, *, unseen: bool = True
    ) -> None:
        self._controller = controller
        self.reserved_s = audio_s
        self._unseen = unseen  # not through the VAD yet

    def shrink_to(self, audio_s: float) -> None:
        """The VAD found ``audio_s`` of speech: release the rest (silence costs nothing)."""
        if self._unseen:
            self._unseen = False
            self._controller._seen(self.reserved_s, audio_s)
        if audio_s < self.reserved_s:
            self._controller._release(self.reserved_s - audio_s, completed=False)
            self.reserved_s = audio_s

    def completed(self, audio_s: float) -> None:
        """A segment of ``audio_s`` was recognized: release it and count it as drained."""
        released = min(audio_s, self.reserved_s)
        if released > 0:
            self.reserved_s -= released
            self._controller._release(released, completed=True, unseen=self._unseen)

    @property
    def speech_s(self) -> float:
        """What it still holds, in speech seconds (unseen audio at the speech share)."""
        share = self._controller.speech_share if self._unseen else 1.0
        return self.reserved_s * share

    def close(self) -> None:
        """The request ended (done, failed or cancelled): release what it still holds."""
        self._controller._tickets.discard(self)
        if self.reserved_s > 0:
            self._controller._release(self.reserved_s, completed=False, unseen=self._unseen)
            self.reserved_s = 0.0
        self._unseen = False


def _fmt_s(seconds: float) -> str:
    return "unbounded" if math.isinf(seconds) else f"{seconds:.0f} s"


class PendingRequests:
    """Requests that arrived but are not admitted or refused yet (upload, decode).

    Their durations are unknown until decoded, so a burst of simultaneous arrivals would
    all pass the early check and be refused only after their uploads were read and
    decoded (measured: 5.6 s for 64 x 2-3 min files on 2 cores). Counting each as the
    average duration of recent requests (an EWMA; ``prior_audio_s`` before any) lets the
    early check refuse the tail of the burst before it reads a byte of body.
    """

    def __init__(self, *, prior_audio_s: float = 30.0, alpha: float = 0.2) -> None:
        self.count = 0
        self.average_audio_s = prior_audio_s
        self._alpha = alpha
        self._seen = False

    def begin(self) -> PendingToken:
        self.count += 1
        return PendingToken(self)

    def _end(self, audio_s: float | None) -> None:
        self.count = max(0, self.count - 1)
        if audio_s is not None:
            if self._seen:
                self.average_audio_s += self._alpha * (audio_s - self.average_audio_s)
            else:
                self.average_audio_s, self._seen = audio_s, True

    def audio_s(self) -> float:
        """Expected audio of the pending requests."""
        return self.count * self.average_audio_s


class PendingToken:
    def __init__(self, pending: PendingRequests) -> None:
        self._pending: PendingRequests | None = pending

    def end(self, audio_s: float | None) -> None:
        """The request was decoded (``audio_s``) or failed before (None); idempotent."""
        if self._pending is not None:
            self._pending._end(audio_s)
            self._pending = None


# Retry-After of a request refused while this instance drains before a stop.
DRAIN_RETRY_AFTER_S = 2.0


class InFlight:
    """Transcription requests in flight on one ingress replica, and whether it drains.

    Graceful stop (serve_app.online.run) sets ``draining`` through the ingress's
    ``user_config``: the replica then refuses new transcriptions (503 + Retry-After) and
    fails readiness, and the runner waits until ``count`` is 0 on every replica.
    """

    def __init__(self) -> None:
        self.draining = False
        self.count = 0

    def check_open(self) -> None:
        """Raise :class:`OverloadedError` while draining."""
        if self.draining:
            raise OverloadedError(
                "the service is shutting down; retry on another instance",
                retry_after_s=DRAIN_RETRY_AFTER_S,
            )
