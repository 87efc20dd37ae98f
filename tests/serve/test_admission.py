"""Admission control in audio seconds (serve_app.online.admission) with a fake clock."""

from __future__ import annotations

import pytest

from serve_app.core.errors import OverloadedError
from serve_app.online.admission import AdmissionController, AdmissionPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def controller(**policy) -> tuple[AdmissionController, Clock]:
    clock = Clock()
    return AdmissionController(AdmissionPolicy(**policy), model="m", clock=clock), clock


def drain(ctl: AdmissionController, clock: Clock, *, rate: float, seconds: float, step=0.5):
    """Keep the queue busy and complete audio at ``rate`` audio-s per second."""
    ticket = ctl.admit(rate * seconds * 2)  # enough queued to stay busy throughout
    elapsed = 0.0
    while elapsed < seconds - 1e-9:
        clock.now += step
        elapsed += step
        ticket.completed(rate * step)
    return ticket


def test_an_idle_model_admits_anything():
    ctl, _ = controller(max_queue_wait_s=1.0, initial_rate_audio_s_per_s=1.0)
    ticket = ctl.admit(3600.0)  # a one-hour file, before any rate is known
    assert ctl.queued_audio_s == 3600.0
    ticket.close()
    assert ctl.queued_audio_s == 0.0


def test_cold_start_is_bounded_by_the_initial_rate_guess():
    # 60 s x 10 audio-s/s: 600 s of audio may queue before any rate is measured.
    ctl, _ = controller(max_queue_wait_s=60.0, initial_rate_audio_s_per_s=10.0)
    admitted = []
    with pytest.raises(OverloadedError) as info:
        for _ in range(64):
            admitted.append(ctl.admit(150.0))  # 64 clients x 2.5 min
    assert len(admitted) == 4  # 4 x 150 = 600 s; the fifth would wait 75 s
    assert info.value.retry_after_s == pytest.approx(750 / 10 - 60)


def test_the_drain_rate_is_measured_over_busy_time_only():
    ctl, clock = controller(initial_rate_audio_s_per_s=1.0, rate_window_s=30, min_busy_s=5)
    assert ctl.measured_rate() is None
    ticket = drain(ctl, clock, rate=20.0, seconds=4.0)
    assert ctl.measured_rate() is None  # under min_busy_s: the guess stands
    assert ctl.rate() == 1.0
    for _ in range(12):
        clock.now += 0.5
        ticket.completed(10.0)
    assert ctl.measured_rate() == pytest.approx(20.0, rel=0.05)
    ticket.close()
    clock.now += 3600.0  # an idle hour must not decay or dilute it
    assert ctl.measured_rate() == pytest.approx(20.0, rel=0.05)


def test_the_rate_follows_a_change_within_its_window():
    ctl, clock = controller(rate_window_s=10.0, min_busy_s=1.0)
    drain(ctl, clock, rate=40.0, seconds=30.0).close()
    assert ctl.measured_rate() == pytest.approx(40.0, rel=0.05)
    drain(ctl, clock, rate=10.0, seconds=40.0).close()  # 4 windows later
    assert ctl.measured_rate() == pytest.approx(10.0, rel=0.1)


def test_expected_wait_rejects_with_retry_after_from_the_estimate():
    ctl, clock = controller(max_queue_wait_s=60.0, min_busy_s=1.0)
    drain(ctl, clock, rate=10.0, seconds=10.0).close()
    queued = ctl.admit(500.0)  # 50 s of work at 10 audio-s/s
    # Shared time: the queued request delays a new one by at most the new one's size.
    ctl.check(300.0)  # (300 + 300) / 10 = 60 s: admitted
    with pytest.raises(OverloadedError) as info:
        ctl.check(400.0)  # (400 + 400) / 10 = 80 s
    # Discrete completions read the rate a little high (10.1 audio-s/s): about 19 s.
    assert info.value.retry_after_s == pytest.approx(20.0, rel=0.1)
    queued.completed(400.0)  # the queue drains: (400 + 100) / 10 fits now
    ctl.check(400.0)


def test_a_short_request_behind_a_long_one_waits_for_its_share_not_the_whole():
    """One hour-long upload queued: a 3 s file was refused (Retry-After 184 s) though
    forwards take items in rounds across requests; it waits for 3 s of the hour's."""
    ctl, clock = controller(max_queue_wait_s=60.0, min_busy_s=1.0)
    drain(ctl, clock, rate=10.0, seconds=10.0).close()
    hour = ctl.admit(3600.0)
    ctl.check(3.0)  # (3 + 3) / 10 s
    assert ctl.expected_wait_s(3.0) == pytest.approx(0.6, rel=0.1)
    with pytest.raises(OverloadedError):
        ctl.check(600.0)  # a long one behind it still waits (600 + 600) / 10 s
    assert ctl.expected_wait_s() == pytest.approx(360.0, rel=0.1)  # the whole queue
    hour.close()


def test_silence_released_after_vad_does_not_count_as_drained():
    ctl, clock = controller(min_busy_s=1.0)
    ticket = ctl.admit(100.0)
    clock.now += 1.0
    ticket.shrink_to(40.0)  # the VAD found 40 s of speech
    assert ctl.queued_audio_s == 40.0
    clock.now += 1.0
    ticket.completed(30.0)
    ticket.completed(30.0)  # packed pieces may exceed the speech: never below zero
    assert ctl.queued_audio_s == 0.0
    # 40 s released as drained over 2 s busy: 20 audio-s/s, not (100 s / 2 s).
    assert ctl.measured_rate() == pytest.approx(20.0, rel=0.1)


def test_audio_not_through_the_vad_yet_counts_at_the_speech_share_seen():
    # Files of half silence: the recognizer drains 10 speech-s/s, i.e. 20 audio-s/s.
    ctl, clock = controller(max_queue_wait_s=60.0, min_busy_s=1.0, speech_share_alpha=1.0)
    first = ctl.admit(400.0)
    first.shrink_to(200.0)  # the VAD: half of it is speech
    for _ in range(10):
        clock.now += 1.0
        first.completed(10.0)
    assert ctl.measured_rate() == pytest.approx(10.0, rel=0.1)  # speech-s per second
    # Queued: 100 s of speech (10 s of work). A new 800 s file is ~400 s of speech, 40 s
    # of work: 50 s in all, admitted; counted whole (800 s) it waited 90 s and was refused.
    second = ctl.admit(800.0)
    assert ctl.speech_share == pytest.approx(0.5)
    with pytest.raises(OverloadedError) as info:
        ctl.check(800.0)  # 400 + 100 + 400 s of speech (each queued one up to 400): ~90 s
    assert info.value.retry_after_s == pytest.approx(30.0, rel=0.15)
    # A ticket closed before its VAD ran (a failed decode) leaves nothing unseen behind.
    second.close()
    first.close()
    assert ctl.queued_audio_s == 0.0 and ctl.expected_wait_s() == 0.0


def test_live_utterances_are_speech_already():
    ctl, _ = controller(speech_share_alpha=1.0)
    ctl.admit(100.0).shrink_to(20.0)  # files so far: a fifth speech
    ticket = ctl.admit(10.0, speech=True)  # a live final: all of it is speech
    assert ctl.expected_wait_s() == pytest.approx((20.0 + 10.0) / 10.0)  # the initial rate
    ticket.completed(10.0)
    assert ctl.expected_wait_s() == pytest.approx(20.0 / 10.0)


def test_a_stuck_recognizer_rejects_until_its_queue_empties_then_admits():
    ctl, clock = controller(max_queue_wait_s=10.0, min_busy_s=1.0, rate_window_s=5.0)
    drain(ctl, clock, rate=10.0, seconds=5.0).close()
    stuck = ctl.admit(50.0)
    clock.now += 120.0  # nothing completes: the measured rate collapses
    with pytest.raises(OverloadedError) as info:
        ctl.check(10.0)
    assert info.value.retry_after_s == ctl.policy.max_retry_after_s
    stuck.close()  # its request failed or timed out
    ctl.admit(10.0)  # idle again: admitted whatever the stale rate says


def test_requests_still_uploading_count_at_the_average_length():
    from serve_app.online.admission import PendingRequests

    pending = PendingRequests(prior_audio_s=30.0)
    assert pending.audio_s() == 0.0
    first, second = pending.begin(), pending.begin()
    assert pending.audio_s() == 60.0  # the prior until a duration is seen
    first.end(150.0)
    first.end(150.0)  # idempotent
    assert pending.count == 1 and pending.average_audio_s == 150.0
    second.end(None)  # failed before decoding: no duration learnt
    assert pending.count == 0 and pending.average_audio_s == 150.0


def test_a_burst_is_refused_before_its_bodies_are_read():
    """64 simultaneous arrivals of ~150 s files at 12 audio-s/s with a 60 s limit: the
    early check (pending requests at the average length) lets through only what fits."""
    from serve_app.online.admission import PendingRequests

    ctl, clock = controller(max_queue_wait_s=60.0, min_busy_s=1.0)
    drain(ctl, clock, rate=12.0, seconds=10.0).close()
    pending = PendingRequests()
    pending.begin().end(150.0)  # one request seen: the average is 150 s
    passed = 0
    for _ in range(64):
        try:
            ctl.check(pending.average_audio_s, pending_audio_s=pending.audio_s())
        except OverloadedError:
            continue
        pending.begin()
        passed += 1
    # The first at once (idle), then while (k + 1) x 150 s / 12 audio-s/s <= 60 s: 4 in all
    # (60 s x 12 audio-s/s holds 4.8 such files).
    assert passed == 4


def test_busy_time_before_anything_drained_is_no_measurement():
    """A new ingress replica (one started after a node died) whose first requests wait for
    a recognizer being replaced: busy with nothing drained is not a rate of zero, which
    would refuse every request with an unbounded wait; the initial rate stands in."""
    ctl, clock = controller(max_queue_wait_s=60.0, initial_rate_audio_s_per_s=10.0)
    ticket = ctl.admit(20.0)
    clock.now += 15.0  # busy, nothing back yet
    assert ctl.measured_rate() is None
    ctl.check(20.0)  # (20 + 20) / 10 = 4 s: admitted
    ticket.completed(20.0)
    assert ctl.measured_rate() is not None  # measured from the first release on


def test_a_request_of_no_model_yet_gets_the_soonest_retry_after():
    """Before the form is read every model's queue is asked; refused by all, the answer is
    the soonest Retry-After (an idle model with a cold rate guess said 308 s for a request
    another model could take in 2 s, and OpenAI's client does not retry past 120 s)."""
    from serve_app.online.admission import InFlight, PendingRequests
    from serve_app.online.transcription import TranscriptionEndpoint

    busy, _ = controller(max_queue_wait_s=60.0, initial_rate_audio_s_per_s=10.0)
    for _ in range(30):
        busy.admit(20.0)  # 60 s of work queued, in requests as long as the new one
    cold, _ = controller(max_queue_wait_s=60.0, initial_rate_audio_s_per_s=1.0)
    endpoint = TranscriptionEndpoint(
        service=None,  # type: ignore[arg-type]
        options=None,  # type: ignore[arg-type]
        admission={"busy": busy, "cold": cold},
        pending=PendingRequests(),
        cache=None,
        in_flight=InFlight(),
        capabilities=None,  # type: ignore[arg-type]
        publish=lambda _model: None,
    )
    with pytest.raises(OverloadedError) as info:
        endpoint._admission_check(None, 20.0, "before_body", pending_audio_s=100.0)
    # busy: (600 + 120) / 10 = 72 s, 12 s over; cold: 120 / 1 = 120 s, 60 s over.
    assert info.value.retry_after_s == pytest.approx(12.0)
