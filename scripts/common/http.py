"""The HTTP load of the scripts: one record per answer, and three shapes of load.

- :func:`run_closed`: every file once (per repeat) from C clients draining a queue, the
  recognizers' counters (every replica, ``/v1/system``) before and after: the throughput
  figure (loadgen, the benchmark's rows 3 and 4, the A/B rounds of stage_cost).
- a burst: every request at once, ``asyncio.gather`` of :func:`send` (overload).
- :class:`LoopedLoad`: clients posting in a loop until stopped, their number changeable
  while they run, each answer tagged with the phase it started in (soak, autoscale demo,
  restart under load).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from scripts.common.audio import SpokenFile

TRANSCRIPTIONS = "/v1/audio/transcriptions"
MAX_BACKOFF_S = 30.0


def percentile(
    values: Sequence[float], q: float, default: float | None = None, digits: int | None = None
) -> float | None:
    """The ``q``-th percentile, linear between ranks (numpy's default), rounded to
    ``digits`` if given; ``default`` when there are no values."""
    if not len(values):
        return default
    value = float(np.percentile(np.asarray(values, dtype=np.float64), q))
    return value if digits is None else round(value, digits)


@dataclass
class Answer:
    """One request: when it started and ended (seconds from the load's start), what came
    back. ``t_end_s`` stays 0 while it is in flight."""

    t_start_s: float
    t_end_s: float = 0.0
    status: int = 0  # the HTTP status; 0: no answer (connection error, client timeout)
    audio_s: float = 0.0  # seconds of audio transcribed (the x-audio-duration-s header)
    kind: str = ""  # the file's kind, or the phase the request started in
    error: str = ""
    retry_after: str | None = None
    text: str = ""
    file: str = ""  # the name of the file sent

    @property
    def latency_s(self) -> float:
        return self.t_end_s - self.t_start_s

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def rejected(self) -> bool:
        """Admission control said "later" (503 + Retry-After): an answer, not a failure."""
        return self.status == 503 and bool(self.retry_after)

    @property
    def failed(self) -> bool:
        return not self.ok and not self.rejected

    @property
    def verdict(self) -> str:
        """``ok``, ``shed`` (503 with Retry-After: load shed, the client retries), ``failed``."""
        return "ok" if self.ok else "shed" if self.rejected else "failed"

    @property
    def outcome(self) -> str:
        """``200``, ``503`` ..., or ``timeout`` / the client error's name (no answer)."""
        if self.status:
            return str(self.status)
        return "timeout" if self.error.startswith("client timeout") else self.error.split(":")[0]


async def send(
    http: httpx.AsyncClient,
    url: str,
    file: SpokenFile,
    answer: Answer,
    form: Mapping[str, str] | None = None,
    t0: float = 0.0,
) -> Answer:
    """POST ``file`` to the transcriptions route; fill ``answer`` (times from ``t0``)."""
    answer.file = file.name
    try:
        resp = await http.post(
            url.rstrip("/") + TRANSCRIPTIONS,
            files={"file": (file.name, file.data(), "audio/wav")},
            data=dict(form or {}),
        )
    except httpx.TimeoutException:
        answer.error = "client timeout"
    except httpx.HTTPError as exc:
        answer.error = f"{type(exc).__name__}: {exc}"[:200]
    else:
        answer.status = resp.status_code
        answer.retry_after = resp.headers.get("retry-after")
        if resp.status_code == 200:
            answer.audio_s = float(resp.headers.get("x-audio-duration-s", file.duration_s))
            json_body = resp.headers.get("content-type", "").startswith("application/json")
            answer.text = str(resp.json().get("text", "")) if json_body else resp.text
        else:
            answer.error = resp.text[:200]
    answer.t_end_s = time.monotonic() - t0
    return answer


async def service_stats(http: httpx.AsyncClient, url: str, *, settle_s: float = 0.0) -> dict:
    """The recognizers' counters, every replica summed (``/v1/system``'s totals, reported
    by each replica once a second: ``settle_s`` lets the last report arrive); else one
    replica's (``/v1/stats``, a server without the board); {} where the server has none."""
    await asyncio.sleep(settle_s)
    base = url.rstrip("/")
    try:
        resp = await http.get(base + "/v1/system")
        models = resp.json().get("models", {}) if resp.status_code == 200 else {}
        if models and all(entry.get("replicas") for entry in models.values()):
            return {name: entry["totals"] for name, entry in models.items()}
        resp = await http.get(base + "/v1/stats")
        return dict(resp.json()) if resp.status_code == 200 else {}
    except (httpx.HTTPError, ValueError, AttributeError):
        return {}


def stats_delta(before: dict, after: dict, model: str) -> dict:
    """Batch sizes, padding efficiency and busy seconds of ``model`` between two stats."""
    b, a = before.get(model, {}), after.get(model, {})
    counts = {}
    for size, n in a.get("batch_size_counts", {}).items():
        diff = n - b.get("batch_size_counts", {}).get(size, 0)
        if diff:
            counts[int(size)] = diff
    real = a.get("audio_s", 0) - b.get("audio_s", 0)
    padded = a.get("padded_s", 0) - b.get("padded_s", 0)
    return {
        "batch_size_counts": dict(sorted(counts.items())),
        "padding_efficiency": (real / padded) if padded else float("nan"),
        "recognizer_busy_s": a.get("busy_s", 0) - b.get("busy_s", 0),
    }


@dataclass
class ClosedRun:
    answers: list[Answer]
    wall_s: float
    before: dict = field(default_factory=dict)  # /v1/stats
    after: dict = field(default_factory=dict)

    @property
    def audio_s(self) -> float:
        return sum(a.audio_s for a in self.answers if a.ok)

    @property
    def latencies(self) -> list[float]:
        return [a.latency_s for a in self.answers]

    @property
    def errors(self) -> list[str]:
        return [f"{a.outcome} {a.error}" for a in self.answers if not a.ok]


async def run_closed(
    url: str,
    files: Sequence[SpokenFile],
    *,
    concurrency: int,
    form: Mapping[str, str] | None = None,
    repeats: int = 1,
    timeout_s: float = 600.0,
) -> ClosedRun:
    """Every file ``repeats`` times from ``concurrency`` clients; ``cache=false``, so the
    pipeline is measured, not the result cache."""
    queue = [f for _ in range(repeats) for f in files]
    data = {"cache": "false", **(form or {})}
    answers: list[Answer] = []
    t0 = time.monotonic()

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            answer = Answer(time.monotonic() - t0)
            answers.append(answer)
            await send(http, url, queue.pop(0), answer, data, t0)

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as http:
        before = await service_stats(http, url, settle_s=1.5)
        started = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall_s = time.monotonic() - started
        after = await service_stats(http, url, settle_s=1.5)
    return ClosedRun(answers, wall_s, before, after)


class LoopedLoad:
    """Clients posting files in a loop until stopped; every answer kept, tagged with the
    phase it started in (or the file's kind).

    ``long_fraction``: each request takes a ``kind == "long"`` file with this probability,
    else a short one (the soak's mix); without it any file. ``honour_retry_after``: after a
    503 with Retry-After the client waits that long (capped at 30 s, jittered), as an
    OpenAI SDK client does. ``require_text``: a 200 with empty text is a failure.
    Run it in the caller's event loop (:meth:`set_clients`, :meth:`stop`) or in a thread
    of its own (:meth:`start_background`) next to blocking work.
    """

    def __init__(
        self,
        url: str,
        files: Sequence[SpokenFile],
        *,
        form: Mapping[str, str] | None = None,
        timeout_s: float = 600.0,
        long_fraction: float | None = None,
        honour_retry_after: bool = False,
        require_text: bool = False,
        seed: int = 0,
    ) -> None:
        self.url, self.files, self.timeout_s = url, list(files), timeout_s
        self.form = {"cache": "false", **(form or {})}  # the files repeat
        self.long_fraction, self.seed = long_fraction, seed
        self.honour_retry_after, self.require_text = honour_retry_after, require_text
        self.answers: list[Answer] = []
        self.phase = ""
        self.clients = 0
        self.t0 = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def in_flight(self) -> list[Answer]:
        return [a for a in list(self.answers) if not a.t_end_s]

    def count(self, what: str) -> int:
        return sum(bool(getattr(a, what)) for a in list(self.answers) if a.t_end_s)

    async def set_clients(self, clients: int) -> None:
        """Start clients up to ``clients``; those above it finish their request and stop."""
        if self._http is None:
            # No pool limit: the number of clients bounds the connections, and it may grow.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            self._http = httpx.AsyncClient(timeout=self.timeout_s, limits=limits)
        self.clients = clients
        while len(self._tasks) < clients:
            self._tasks.append(asyncio.create_task(self._client(len(self._tasks))))

    async def stop(self) -> None:
        """No new requests; wait for those in flight to be answered."""
        self.clients = 0
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _pick(self, rng: random.Random) -> SpokenFile:
        longs = [f for f in self.files if f.kind == "long"]
        if self.long_fraction is None or not longs:
            return rng.choice(self.files)
        shorts = [f for f in self.files if f.kind != "long"] or longs
        return rng.choice(longs if rng.random() < self.long_fraction else shorts)

    async def _client(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while index < self.clients and self._http is not None:
            file = self._pick(rng)
            answer = Answer(time.monotonic() - self.t0, kind=self.phase or file.kind)
            self.answers.append(answer)
            await send(self._http, self.url, file, answer, self.form, self.t0)
            if self.require_text and answer.ok and not answer.text.strip():
                answer.error = "200 with empty text"
            if self.honour_retry_after and answer.rejected:
                backoff_s = min(MAX_BACKOFF_S, float(answer.retry_after or 0))
                await asyncio.sleep(backoff_s * rng.uniform(0.5, 1.5))

    # -- in a thread of its own, for callers that block (subprocesses, sleeps)

    def start_background(self, clients: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self.set_clients(clients))

    def stop_sending(self) -> None:
        self.clients = 0  # read by every client before its next request

    def stop_background(self, timeout_s: float = 120.0) -> None:
        if self._loop is None or self._thread is None:
            return
        self._call(self.stop(), timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        self._loop = self._thread = None

    def _call(self, coro: Any, timeout_s: float | None = None) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)


def ab_rounds(
    url: str,
    files: Sequence[SpokenFile],
    forms: Mapping[str, Mapping[str, str]],
    *,
    rounds: int,
    concurrency: int,
    alternate: bool = True,
    timeout_s: float = 1800.0,
) -> list[tuple[int, str, ClosedRun]]:
    """(round, label, run): every file under each labelled form in turn, ``rounds`` times,
    so the drift of a shared machine hits every form alike (``alternate``: every other
    round in reverse order). Raises on the first failed request."""
    out = []
    for index in range(rounds):
        labels = list(forms)
        for label in labels[::-1] if alternate and index % 2 else labels:
            run = asyncio.run(
                run_closed(
                    url, files, concurrency=concurrency, form=forms[label], timeout_s=timeout_s
                )
            )
            if run.errors:
                raise RuntimeError(f"{label}: {len(run.errors)} failed, e.g. {run.errors[0]}")
            out.append((index, label, run))
    return out
