"""Retry policy of remote calls (serve_app.online.retry) with a fake clock, sleep and calls."""

from __future__ import annotations

import asyncio

import pytest
from ray import exceptions as ray_exceptions
from ray.serve import exceptions as serve_exceptions

from serve_app.config import RetrySettings
from serve_app.core.errors import DeadlineExceededError, InvalidAudioError, OverloadedError
from serve_app.online.retry import call_with_retries, is_replica_failure


class FakeTime:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def flaky(failures: list[BaseException], value: str = "ok"):
    """A call that raises the given errors in turn, then returns ``value``."""
    calls = {"n": 0}

    async def call():
        calls["n"] += 1
        if failures:
            raise failures.pop(0)
        return value

    return call, calls


def died() -> BaseException:
    return ray_exceptions.ActorDiedError()


def run(coro):
    return asyncio.run(coro)


def test_replica_failures_are_retried_until_success_with_growing_backoff():
    t = FakeTime()
    call, calls = flaky([died(), died(), ray_exceptions.ActorUnavailableError("x", None)])
    policy = RetrySettings(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=10, jitter=0.0)
    result = run(
        call_with_retries(call, policy=policy, deadline_unix_s=None, clock=t.clock, sleep=t.sleep)
    )
    assert result == "ok"
    assert calls["n"] == 4
    assert t.sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_backoff_is_capped_and_jittered_downwards():
    policy = RetrySettings(initial_backoff_s=1.0, max_backoff_s=3.0, multiplier=2.0, jitter=0.5)
    assert policy.backoff_s(1, 0.0) == 1.0
    assert policy.backoff_s(5, 0.0) == 3.0  # capped
    assert policy.backoff_s(5, 1.0) == 1.5  # full jitter halves it
    assert 1.5 <= policy.backoff_s(9, 0.37) <= 3.0


@pytest.mark.parametrize(
    "error",
    [
        InvalidAudioError("bad"),
        OverloadedError("busy"),
        serve_exceptions.BackPressureError(num_queued_requests=1, max_queued_requests=1),
        ValueError("a bug"),
    ],
)
def test_client_errors_backpressure_and_bugs_are_not_retried(error):
    t = FakeTime()
    call, calls = flaky([error])
    with pytest.raises(type(error)):
        run(
            call_with_retries(
                call, policy=RetrySettings(), deadline_unix_s=None, clock=t.clock, sleep=t.sleep
            )
        )
    assert calls["n"] == 1 and t.sleeps == []


def test_last_error_propagates_after_max_attempts():
    t = FakeTime()
    call, calls = flaky([died() for _ in range(10)])
    with pytest.raises(ray_exceptions.ActorDiedError):
        run(
            call_with_retries(
                call,
                policy=RetrySettings(max_attempts=3),
                deadline_unix_s=None,
                clock=t.clock,
                sleep=t.sleep,
            )
        )
    assert calls["n"] == 3


def test_no_retry_sleeps_past_the_deadline():
    t = FakeTime()
    call, calls = flaky([died() for _ in range(50)])
    policy = RetrySettings(max_attempts=50, initial_backoff_s=1.0, max_backoff_s=4.0, jitter=0.0)
    with pytest.raises(DeadlineExceededError):
        run(
            call_with_retries(
                call, policy=policy, deadline_unix_s=t.now + 10.0, clock=t.clock, sleep=t.sleep
            )
        )
    assert sum(t.sleeps) <= 10.0
    assert calls["n"] == 4  # waits 1 + 2 + 4 = 7 s; the next 4 s would end after it


def test_a_passed_deadline_makes_no_call():
    t = FakeTime()
    call, calls = flaky([])
    with pytest.raises(DeadlineExceededError):
        run(
            call_with_retries(
                call, policy=RetrySettings(), deadline_unix_s=t.now - 1, clock=t.clock
            )
        )
    assert calls["n"] == 0


def test_an_attempt_is_cancelled_when_the_deadline_passes():
    """Real clock: a call that hangs is cancelled at the deadline (which cancels the
    remote call in the ingress) and answered as DeadlineExceededError."""
    import time

    cancelled = asyncio.Event()

    async def hang():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main():
        with pytest.raises(DeadlineExceededError):
            await call_with_retries(hang, policy=RetrySettings(), deadline_unix_s=time.time() + 0.2)
        return cancelled.is_set()

    assert run(main())


def test_the_calls_own_timeout_is_not_taken_for_the_deadline():
    import time

    call, _ = flaky([TimeoutError("its own")])
    with pytest.raises(TimeoutError, match="its own"):
        run(call_with_retries(call, policy=RetrySettings(), deadline_unix_s=time.time() + 30))


def test_classifier_follows_ray_causes():
    assert is_replica_failure(died())
    assert is_replica_failure(ray_exceptions.ActorUnavailableError("x", None))
    assert is_replica_failure(serve_exceptions.DeploymentUnavailableError("d"))
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = died()
    assert is_replica_failure(wrapped)
    assert not is_replica_failure(serve_exceptions.RequestCancelledError("r"))
    assert not is_replica_failure(DeadlineExceededError("late"))
