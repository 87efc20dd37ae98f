"""A request whose stage has no running replica is answered 503 naming it (no Ray).

Without this check a handle call waits in Serve's router for a replica; one that cannot be
scheduled never comes, and the request waited for the proxy's timeout (600 s).
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.core.errors import ModelUnavailableError, OverloadedError
from serve_app.online.availability import ReplicaWatch
from serve_app.online.http_errors import error_response

STAGES = ["VadDeployment", "Recognizer-m", "SpeakerDeployment"]


class _Controller:
    def __init__(self, **running: int) -> None:
        self.running = dict(running)
        self.reads = 0

    def status(self) -> dict[str, int]:
        self.reads += 1
        return dict(self.running)


def _watch(controller: _Controller, now: list[float]) -> ReplicaWatch:
    return ReplicaWatch(
        controller.status, unavailable_after_s=30.0, refresh_s=1.0, clock=lambda: now[0]
    )


async def request(watch: ReplicaWatch, stages: list[str], what: str = "m") -> None:
    """One request's check, then the pause before the next: the read it started (in the
    background: a request is checked against the last read) lands meanwhile."""
    try:
        await watch.check(stages, what)
    finally:
        await watch.settled()


def test_a_stage_that_never_ran_is_named_after_the_grace_period():
    controller = _Controller(VadDeployment=1, **{"Recognizer-m": 1, "SpeakerDeployment": 0})
    now = [0.0]

    async def scenario() -> str:
        watch = _watch(controller, now)
        await request(watch, STAGES, "model 'm'")  # at start: the replica may be loading
        now[0] = 31.0
        with pytest.raises(ModelUnavailableError) as caught:
            await request(watch, STAGES, "model 'm'")
        # Requests that do not need the speaker stage still go through.
        await request(watch, STAGES[:2], "model 'm'")
        return caught.value.message

    message = asyncio.run(scenario())
    assert "SpeakerDeployment" in message and "model 'm'" in message
    response = error_response(ModelUnavailableError(message, retry_after_s=30.0), "r1")
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    assert isinstance(ModelUnavailableError("x"), OverloadedError)  # clients retry it


def test_a_replica_restart_shorter_than_the_grace_period_is_waited_for():
    controller = _Controller(VadDeployment=1, **{"Recognizer-m": 1, "SpeakerDeployment": 1})
    now = [100.0]

    async def scenario() -> None:
        watch = _watch(controller, now)
        await request(watch, STAGES)
        controller.running["Recognizer-m"] = 0  # killed; Serve starts a new one
        now[0] += 1.0
        await request(watch, STAGES)  # its read: first seen down; requests still wait
        now[0] += 20.0
        await request(watch, STAGES)  # 20 s without: still waits (in-flight retried)
        now[0] += 11.0
        with pytest.raises(ModelUnavailableError, match="Recognizer-m"):
            await request(watch, STAGES)
        controller.running["Recognizer-m"] = 1  # back
        now[0] += 0.5
        # The last read (0.5 s old) says down: a refusal waits for a read begun after
        # the request came, which sees the replica back.
        await request(watch, STAGES)

    asyncio.run(scenario())


def test_the_controller_is_read_at_most_once_per_refresh_and_its_failure_lets_requests_pass():
    controller = _Controller(VadDeployment=1, **{"Recognizer-m": 1})
    now = [0.0]

    async def scenario() -> None:
        watch = _watch(controller, now)
        await asyncio.gather(*(watch.check(STAGES[:2], "m") for _ in range(20)))
        assert controller.reads == 1
        now[0] += 1.5

        def broken() -> dict[str, int]:
            raise TimeoutError("controller busy")

        watch._status = broken
        await request(watch, STAGES[:2])  # the read fails: the last one still counts
        fresh = _watch(controller, now)
        fresh._status = broken
        await request(fresh, STAGES[:2])  # nothing ever read: not refused either

    asyncio.run(scenario())


def test_the_grace_period_counts_from_the_ingress_start_not_the_first_request():
    controller = _Controller(VadDeployment=1, **{"Recognizer-m": 1, "SpeakerDeployment": 0})
    now = [500.0]
    watch = ReplicaWatch(
        controller.status, unavailable_after_s=30.0, clock=lambda: now[0], started=400.0
    )
    with pytest.raises(ModelUnavailableError, match="SpeakerDeployment"):
        asyncio.run(watch.check(STAGES, "m"))  # the first request, 100 s after the start


def test_a_replica_that_died_while_no_request_came_gets_its_grace_period():
    """The controller is read only when requests come: a stage that was running at the
    last read and is down at this one started its restart in between, not at that read."""
    controller = _Controller(VadDeployment=1, **{"Recognizer-m": 1})
    now = [0.0]

    async def scenario() -> None:
        watch = _watch(controller, now)
        await request(watch, STAGES[:2])
        now[0] = 1000.0  # a quiet night; the recognizer was just killed
        controller.running["Recognizer-m"] = 0
        await request(watch, STAGES[:2])  # waits for the restart
        now[0] += 31.0
        with pytest.raises(ModelUnavailableError):
            await request(watch, STAGES[:2])

    asyncio.run(scenario())


def test_a_slow_controller_delays_neither_requests_nor_readiness():
    """The CI failure this fixes: on a loaded machine ``serve.status()`` took over
    ``timeout_s``; every request of a burst waited for it (its 503 came after 5.6 s) and
    ``/healthz`` answered 503 with every replica running. Now a request is checked
    against the last read, and readiness takes the last good read while it is younger
    than ``stale_ok_s``; older than that, or never read, readiness fails."""
    import threading
    import time

    controller = _Controller(VadDeployment=1, **{"Recognizer-m": 1})
    release = threading.Event()
    now = [0.0]

    def slow() -> dict[str, int]:
        release.wait(10)
        return controller.status()

    async def scenario() -> None:
        watch = ReplicaWatch(
            controller.status,
            unavailable_after_s=30.0,
            refresh_s=1.0,
            timeout_s=0.2,
            stale_ok_s=30.0,
            clock=lambda: now[0],
        )
        running, age_s = await watch.running()
        assert running == {"VadDeployment": 1, "Recognizer-m": 1} and age_s == 0.0
        watch._status = slow  # the controller stops answering in time
        now[0] += 5.0
        t0 = time.monotonic()
        await asyncio.gather(*(watch.check(STAGES[:2], "m") for _ in range(8)))
        assert time.monotonic() - t0 < 0.1  # not one waited for the read
        running, age_s = await watch.running()  # waited timeout_s, then the last read
        assert running["Recognizer-m"] == 1 and age_s == 5.0
        now[0] += 30.0
        with pytest.raises(TimeoutError):
            await watch.running()  # 35 s old: not ready
        release.set()
        await watch.settled()
        assert (await watch.running())[1] == 0.0  # answered: fresh again

    asyncio.run(scenario())


def test_a_replica_up_since_the_last_read_costs_no_503():
    """CI's graceful-stop failure: /healthz (another ingress replica's read) said ready,
    the request went to an ingress whose last read predated the VAD replica's start, and
    it was refused "no running replica (for 37 s)". A refusal is now confirmed by a read
    begun after the request arrived; only a stage still down at that read is refused."""
    controller = _Controller(VadDeployment=0, **{"Recognizer-m": 1, "SpeakerDeployment": 0})
    now = [0.0]

    async def scenario() -> None:
        watch = _watch(controller, now)
        await request(watch, STAGES[:2])  # at start: VAD still loading, within grace
        now[0] = 40.0
        controller.running["VadDeployment"] = 1  # started since that read
        reads = controller.reads
        await watch.check(STAGES[:2], "m")  # the stale read alone would refuse
        assert controller.reads == reads + 1
        # A stage still down at the confirming read is refused; the read is owed even
        # within refresh_s of the last one.
        now[0] += 0.2
        reads = controller.reads
        with pytest.raises(ModelUnavailableError, match="SpeakerDeployment"):
            await watch.check(STAGES, "m")
        assert controller.reads == reads + 1
        # A passing request never waits for a read.
        now[0] += 0.2
        reads = controller.reads
        await watch.check(STAGES[:2], "m")
        assert controller.reads == reads

    asyncio.run(scenario())
