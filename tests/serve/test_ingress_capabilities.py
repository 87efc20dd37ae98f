"""The ingress learns each model's capabilities at start, not behind a busy queue (no Ray).

Language detection per request needs to know whether the model detects languages. That
answer used to be asked on the first request, with a 5 s timeout: under load the call
queued behind the recognizer's backlog, timed out, and the request (and the next ones)
fell back to detecting the language of every segment on its own.
"""

from __future__ import annotations

import asyncio

from serve_app.config import IngressSettings
from serve_app.online.ingress import IngressServer
from tests.serve.fake_ingress import MODEL, FakeHandle, options


class _Recognizer:
    """Answers capabilities at once while idle, only after ``busy_s`` while busy."""

    def __init__(self, busy_s: float) -> None:
        self.busy = False
        self.busy_s = busy_s
        self.calls = 0

    async def capabilities(self) -> dict:
        self.calls += 1
        if self.busy:
            await asyncio.sleep(self.busy_s)
        return {"language_detection": True}


def _server(recognizer: _Recognizer, health_timeout_s: float) -> IngressServer:
    settings = IngressSettings(health_timeout_s=health_timeout_s)
    handle = FakeHandle(capabilities=recognizer.capabilities)
    return IngressServer(FakeHandle(), {MODEL: handle}, options(settings=settings))


def test_capabilities_are_asked_at_start_so_a_busy_queue_does_not_switch_detection_off():
    async def scenario() -> tuple[bool, int]:
        recognizer = _Recognizer(busy_s=60.0)
        server = _server(recognizer, health_timeout_s=0.2)
        await asyncio.sleep(0.05)  # the replica is up; no request yet
        recognizer.busy = True  # now every call waits behind a backlog
        detects = server._detects_language_call(MODEL)
        answers = await asyncio.wait_for(asyncio.gather(*(detects() for _ in range(5))), 5)
        return all(answers), recognizer.calls

    detects_all, calls = asyncio.run(scenario())
    assert detects_all
    assert calls == 1  # asked once, at start


def test_requests_wait_for_one_shared_call_instead_of_giving_up_after_the_health_timeout():
    async def scenario() -> tuple[list[bool], int]:
        recognizer = _Recognizer(busy_s=0.5)
        recognizer.busy = True  # busy from the start: the first call takes 0.5 s
        server = _server(recognizer, health_timeout_s=0.1)
        detects = server._detects_language_call(MODEL)
        answers = await asyncio.wait_for(asyncio.gather(*(detects() for _ in range(5))), 5)
        return list(answers), recognizer.calls

    answers, calls = asyncio.run(scenario())
    assert answers == [True] * 5
    assert calls == 1


def test_a_failed_capabilities_call_is_asked_again():
    async def scenario() -> tuple[bool, bool]:
        attempts = {"n": 0}

        async def flaky() -> dict:
            attempts["n"] += 1
            if attempts["n"] == 1:
                raise RuntimeError("replica restarting")
            return {"language_detection": True}

        server = IngressServer(FakeHandle(), {MODEL: FakeHandle(capabilities=flaky)}, options())
        await asyncio.sleep(0.05)  # the call at start has failed by now
        detects = server._detects_language_call(MODEL)
        return await detects(), attempts["n"]

    detects, attempts = asyncio.run(scenario())
    # The start-time call failed; the first request asks again and gets the answer.
    assert detects and attempts == 2
