"""Is there a replica to send this request to? A 503 naming the stage, not a long wait.

A handle call to a deployment with no running replica waits in Serve's router until one
starts, and a replica that can never be scheduled never starts: the request then waits
for the proxy's timeout (600 s in the default config). :class:`ReplicaWatch` reads the
controller's replica counts (``serve.status``, at most once per ``refresh_s``, shared by
every request of this ingress replica) and refuses a request whose stages have had no
running replica for ``unavailable_after_s``: long enough for a killed replica to be
replaced (requests keep waiting through a restart, and those in flight are retried), short
enough that a model that cannot start is reported in seconds, with ``Retry-After``.

The same watch answers ``/healthz``. Neither waits on a slow controller: a request is
checked against the last read while the next one runs in the background (one dedicated
thread, never queued behind decodes on the default executor), and readiness takes the
last good read while it is younger than ``stale_ok_s``. Before this, each probe and each
request awaited ``serve.status()`` for up to ``timeout_s``: on a loaded 2-core CI machine
a burst's 503s took 5.6 s instead of milliseconds and ``/healthz`` answered 503 right
after the burst, with every replica running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from serve_app.core.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, int]]  # deployment name -> running replicas (blocking)


class ReplicaWatch:
    def __init__(
        self,
        status: StatusFn,
        *,
        unavailable_after_s: float = 30.0,
        refresh_s: float = 1.0,
        timeout_s: float = 5.0,
        stale_ok_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self._status = status
        self._unavailable_after_s = unavailable_after_s
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._stale_ok_s = stale_ok_s
        self._clock = clock
        # When the ingress started (a stage never seen running counts from then).
        self._started = clock() if started is None else started
        self._running: dict[str, int] = {}
        self._seen_running: set[str] = set()
        # When each stage was first seen without a running replica (by this ingress).
        self._down_since: dict[str, float] = {}
        self._fetched_at: float | None = None  # the last successful read
        self._read_started: float | None = None  # when the read in force began
        self._attempted_at: float | None = None  # the last read started
        self._fetch: asyncio.Task | None = None
        self._last_error: BaseException | None = None
        # Its own thread: a read never waits behind the decodes on the default executor.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-watch")

    async def check(self, deployments: Sequence[str], what: str) -> None:
        """Raise :class:`ModelUnavailableError` when one of ``deployments`` has had no
        running replica for ``unavailable_after_s`` (``what``: the model, for the message).

        A request that passes is checked against the last read (only the first check
        waits for one; each starts the next in the background). A refusal is confirmed
        by a read begun after the request arrived (a read in flight that began earlier
        is awaited first: up to 2 x ``timeout_s`` in all): a replica that
        came up since the last read (at start, after a restart) must not cost a 503,
        and /healthz may already have said ready from another ingress replica's read.
        An unknown state (no read has succeeded yet) lets the request through."""
        arrived = self._clock()
        try:
            await self._refresh(wait=self._fetched_at is None)
        except Exception as exc:  # never fail a request on the watch itself
            logger.warning("replica states unknown (%r)", exc)
        if self._fetched_at is None:
            return
        down = self._down(deployments)
        stale = self._read_started is None or self._read_started < arrived
        if down is not None and stale:
            try:
                await self._read_since(arrived)
            except Exception as exc:  # the controller is slow: refuse on the last read
                logger.warning("refusal not confirmed by a fresh read (%r)", exc)
            down = self._down(deployments)
        if down is not None:
            name, for_s = down
            raise ModelUnavailableError(
                f"{what}: deployment {name} has no running replica (for {for_s:.0f} "
                "s: starting, failing, or it cannot be scheduled; see /healthz and "
                "`serve status`); retry later",
                retry_after_s=min(self._unavailable_after_s, 30.0),
            )

    def _down(self, deployments: Sequence[str]) -> tuple[str, float] | None:
        """(a deployment without a running replica for the grace period, for how long)."""
        now = self._clock()
        for name in deployments:
            if self._running.get(name, 0) > 0:
                continue
            since = self._down_since.get(name, self._started)
            if now - since >= self._unavailable_after_s:
                return name, now - since
        return None

    async def _read_since(self, arrived: float) -> None:
        """Wait for a read that began at or after ``arrived`` (the one in flight if it
        did, else the next; reads stay shared, one at a time)."""
        if self._fetch is not None and not self._fetch.done():
            started = self._attempted_at
            await asyncio.wait_for(asyncio.shield(self._fetch), self._timeout_s)
            if started is not None and started >= arrived:
                return
        self._attempted_at = None  # not "at most one per refresh_s": this one is owed
        await self._refresh(wait=True)

    async def running(self) -> tuple[dict[str, int], float]:
        """(running replicas per deployment, age of that read in s) for readiness: a
        fresh read when the controller answers within ``timeout_s``, else the last good
        read while it is younger than ``stale_ok_s``. Raises when there is none."""
        try:
            await self._refresh(wait=True)
        except Exception as exc:
            if self.age_s() > self._stale_ok_s:
                raise
            logger.warning("readiness from a read %.1f s old (%r)", self.age_s(), exc)
        if self.age_s() > self._stale_ok_s:
            raise self._last_error or RuntimeError("no recent read of the replica states")
        return dict(self._running), self.age_s()

    async def settled(self) -> None:
        """Wait for the read in flight, if any (its outcome is the watch's state)."""
        if self._fetch is not None:
            await asyncio.wait([self._fetch])

    def age_s(self) -> float:
        return float("inf") if self._fetched_at is None else self._clock() - self._fetched_at

    async def _refresh(self, *, wait: bool) -> None:
        if self._fetch is None or self._fetch.done():
            # At most one read per refresh_s, failed ones included.
            since_s = None if self._attempted_at is None else self._clock() - self._attempted_at
            if since_s is not None and since_s < self._refresh_s:
                return
            self._attempted_at = self._clock()
            self._fetch = asyncio.get_running_loop().create_task(self._read())
            # Collected here so a failed background read is not logged as never retrieved.
            self._fetch.add_done_callback(lambda t: t.cancelled() or t.exception())
        if wait:
            await asyncio.wait_for(asyncio.shield(self._fetch), self._timeout_s)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        started = self._clock()
        try:
            running = await loop.run_in_executor(self._executor, self._status)
        except Exception as exc:
            self._last_error = exc
            raise
        self._last_error = None
        now = self._clock()
        self._running = dict(running)
        for name, count in running.items():
            if count > 0:
                self._seen_running.add(name)
                self._down_since.pop(name, None)
            elif name not in self._down_since:
                # Down since the start if never seen running, else since this read (it
                # was running at an earlier one: a restart began in between).
                self._down_since[name] = self._started if name not in self._seen_running else now
        self._fetched_at = now
        self._read_started = started


def serve_running_replicas(app_name: str) -> dict[str, int]:
    """Running replicas per deployment of ``app_name``, from the Serve controller."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    out = {}
    for name, dep in app.deployments.items():
        states: dict = dict(dep.replica_states)  # keys: ReplicaState, a str enum
        out[name] = int(states.get("RUNNING", 0))
    return out
