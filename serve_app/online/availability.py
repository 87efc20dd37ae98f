"""Is there a replica to send this request to? A 503 naming the stage, not a long wait.

A handle call to a deployment with no running replica waits in Serve's router until one
starts, and a replica that can never be scheduled never starts: the request then waits
for the proxy's timeout (600 s in the default config). :class:`ReplicaWatch` reads the
controller's replica counts (``serve.status``, at most once per ``refresh_s``, shared by
every request of this ingress replica) and refuses a request whose stages have had no
running replica for ``unavailable_after_s``: long enough for a killed replica to be
replaced (requests keep waiting through a restart, and those in flight are retried), short
enough that a model that cannot start is reported in seconds, with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

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
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self._status = status
        self._unavailable_after_s = unavailable_after_s
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._clock = clock
        # When the ingress started (a stage never seen running counts from then).
        self._started = clock() if started is None else started
        self._running: dict[str, int] = {}
        self._seen_running: set[str] = set()
        # When each stage was first seen without a running replica (by this ingress).
        self._down_since: dict[str, float] = {}
        self._fetched_at: float | None = None
        self._fetch: asyncio.Task | None = None

    async def check(self, deployments: Sequence[str], what: str) -> None:
        """Raise :class:`ModelUnavailableError` when one of ``deployments`` has had no
        running replica for ``unavailable_after_s`` (``what``: the model, for the message).
        An unknown state (the controller slow to answer) lets the request through."""
        try:
            await self._refresh()
        except Exception as exc:  # never fail a request on the watch itself
            logger.warning("replica states unknown (%r)", exc)
            return
        now = self._clock()
        for name in deployments:
            if self._running.get(name, 0) > 0:
                continue
            since = self._down_since.get(name, self._started)
            if now - since >= self._unavailable_after_s:
                raise ModelUnavailableError(
                    f"{what}: deployment {name} has no running replica (for {now - since:.0f} "
                    "s: starting, failing, or it cannot be scheduled; see /healthz and "
                    "`serve status`); retry later",
                    retry_after_s=min(self._unavailable_after_s, 30.0),
                )

    async def _refresh(self) -> None:
        now = self._clock()
        if self._fetched_at is not None and now - self._fetched_at < self._refresh_s:
            return
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.get_running_loop().create_task(self._read())
        await asyncio.shield(self._fetch)

    async def _read(self) -> None:
        running = await asyncio.wait_for(asyncio.to_thread(self._status), self._timeout_s)
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
