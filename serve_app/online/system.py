"""System view and live tuning over *every* replica: ``GET /v1/system``, ``/v1/tune``.

Why a board actor: a Serve handle routes each call to one replica of its choosing, so the
ingress cannot ask "each replica" through it, and a replica's own actor only answers
Serve's internal request protocol. Instead every recognizer replica runs a small
:class:`StatsPusher` thread that, once a second, sends its statistics to one named actor
per app, the :class:`StatsBoard` (namespace ``serve``, ``lifetime="detached"``, zero CPUs),
and gets back the tuning the operator asked for. The board

- sums the replicas now reporting (a replica silent for ``stale_after_s`` drops out, and
  is forgotten after ``forget_after_s``),
- keeps per model a monotonic total of audio and busy seconds (a restarted replica's
  counters start again from 0: its new totals are added, not subtracted), sampled into a
  ring of (time, audio_s, busy_s) for RTFx over the last minutes, and
- holds the tuning (``max_batch_audio_s``, ``batch_wait_timeout_s``) per model with a
  version number. Each replica applies a newer version through the recognizer's own
  ``reconfigure`` (the same code a ``user_config`` update runs) and reports the version
  and values now in force, which is what ``POST /v1/tune`` waits for.

What survives: the tuning lives in the detached board, so replicas that start later
(autoscaling, a restarted replica) get it on their first report, within a second of
starting. It does not survive a restart of the Ray cluster, the stop of
``serve_app.online.run`` (which deletes the board with the app), nor an hour in which no
replica reported (:data:`BOARD_EXPIRE_AFTER_S`: the app is gone), and a redeploy whose
``user_config`` sets the same fields overrides it until the next tune (last writer wins);
make a setting permanent in the config file. A redeploy that changes a replica's
configured batch settings (the ``args`` or the ``user_config``) clears the tuning: replicas
of the new config keep what it says. The numbers are at most ~1 s old.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serve_app.core.errors import InvalidRequestError, UnknownModelError

logger = logging.getLogger(__name__)

BOARD_NAMESPACE = "serve"
TUNABLE = ("max_batch_audio_s", "batch_wait_timeout_s")
_SUMMED = ("num_batches", "items", "audio_s", "padded_s", "busy_s")
_WARN_EVERY_S = 60.0
# The ingress replicas report their drain state under this key (not a model).
INGRESS_KEY = "__ingress__"


def board_name(app_name: str) -> str:
    return f"asr-stats-board-{app_name}"


@dataclass
class _ModelTotals:
    audio_s: float = 0.0  # monotonic over replica restarts
    busy_s: float = 0.0
    ring: deque = field(default_factory=deque)  # (unix_s, audio_s, busy_s)
    tuning: dict[str, float] = field(default_factory=dict)
    version: int = 0
    tuned_at: tuple[float, float, float] | None = None  # ring sample at the last tune
    tuned_over: Any = None  # the replicas' configured settings when the tuning was set


class StatsBoard:
    """Plain class (the Ray actor wraps it): replica reports in, aggregates out."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        ring_s: float = 900.0,
        sample_every_s: float = 1.0,
        stale_after_s: float = 10.0,
        forget_after_s: float = 300.0,
    ) -> None:
        self._clock = clock
        self._ring_s = ring_s
        self._sample_every_s = sample_every_s
        self._stale_after_s = stale_after_s
        # A replica silent this long is gone (replaced, scaled down): its entry is dropped,
        # so the board's memory follows the replicas alive, not every replica ever started.
        # (Longer than stale_after_s: a replica back from a pause is not counted anew.)
        self._forget_after_s = max(forget_after_s, stale_after_s)
        self._models: dict[str, _ModelTotals] = {}
        self._replicas: dict[tuple[str, str], tuple[float, dict]] = {}  # -> (seen, stats)
        self._last_publish_s = clock()

    def _model(self, model: str) -> _ModelTotals:
        return self._models.setdefault(model, _ModelTotals())

    def publish(self, model: str, replica_id: str, stats: dict) -> dict:
        """Record one replica's cumulative stats; answer the tuning it should run."""
        now = self._clock()
        self._last_publish_s = now
        totals = self._model(model)
        previous = self._replicas.get((model, replica_id))
        for key in ("audio_s", "busy_s"):
            new = float(stats.get(key, 0.0))
            old = float(previous[1].get(key, 0.0)) if previous else 0.0
            delta = new - old if new >= old else new  # counters went back: a restart
            setattr(totals, key, getattr(totals, key) + delta)
        self._replicas[(model, replica_id)] = (now, dict(stats))
        self._forget_gone(now)
        configured = stats.get("configured")
        if totals.tuning and configured is not None and totals.tuned_over is not None:
            if configured != totals.tuned_over:
                # A redeploy changed the configured settings after the tune: the new
                # config wins (its replicas keep what it says) until the next tune.
                totals.tuning = {}
                totals.version += 1
                totals.tuned_over = None
        sample = (now, totals.audio_s, totals.busy_s)
        if totals.ring and now - totals.ring[-1][0] < self._sample_every_s:
            totals.ring[-1] = sample
        else:
            totals.ring.append(sample)
        while totals.ring and now - totals.ring[0][0] > self._ring_s:
            totals.ring.popleft()
        return {"version": totals.version, "settings": dict(totals.tuning)}

    def _forget_gone(self, now: float) -> None:
        gone = [k for k, (seen, _) in self._replicas.items() if now - seen > self._forget_after_s]
        for key in gone:
            del self._replicas[key]

    def silent_s(self) -> float:
        """Seconds since the last replica report (since creation before any)."""
        return self._clock() - self._last_publish_s

    def num_replicas_known(self) -> int:
        return len(self._replicas)

    def set_tuning(self, model: str, settings: dict[str, float]) -> int:
        totals = self._model(model)
        totals.tuning.update(settings)
        totals.version += 1
        seen = [(t, st) for (m, _), (t, st) in self._replicas.items() if m == model]
        if seen:
            totals.tuned_over = max(seen, key=lambda pair: pair[0])[1].get("configured")
        totals.tuned_at = (self._clock(), totals.audio_s, totals.busy_s)
        return totals.version

    def tuning(self, model: str) -> dict:
        totals = self._model(model)
        return {"version": totals.version, "settings": dict(totals.tuning)}

    def snapshot(self, window_s: float = 120.0) -> dict[str, dict]:
        now = self._clock()
        out: dict[str, dict] = {}
        for model, totals in self._models.items():
            live = [
                {"replica_id": rid, **stats}
                for (m, rid), (seen, stats) in sorted(self._replicas.items())
                if m == model and now - seen <= self._stale_after_s
            ]
            out[model] = {
                "replicas": live,
                "totals": _sum_replicas(live),
                "cumulative": {"audio_s": totals.audio_s, "busy_s": totals.busy_s},
                "rtfx": _rate(totals.ring, now - window_s),
                "rtfx_since_tune": (
                    _rate_from(totals.tuned_at, totals.ring[-1]) if totals.tuned_at else None
                ),
                "tuning": {"version": totals.version, "settings": dict(totals.tuning)},
            }
        return out


def _sum_replicas(replicas: list[dict]) -> dict:
    totals: dict[str, Any] = {key: 0 for key in _SUMMED}
    sizes: dict[int, int] = {}
    errors: dict[str, int] = {}
    for rep in replicas:
        for key in _SUMMED:
            totals[key] += rep.get(key, 0)
        for size, count in (rep.get("batch_size_counts") or {}).items():
            sizes[int(size)] = sizes.get(int(size), 0) + int(count)
        for kind, count in (rep.get("errors") or {}).items():
            errors[kind] = errors.get(kind, 0) + int(count)
    totals["batch_size_counts"] = dict(sorted(sizes.items()))
    totals["errors"] = errors
    padded = totals["padded_s"]
    totals["padding_efficiency"] = totals["audio_s"] / padded if padded > 0 else None
    return totals


def _rate(ring: deque, since_unix_s: float) -> dict | None:
    """Audio seconds per wall second (the service's RTFx) between the oldest sample in
    the window and the newest, and per busy second (the model's own speed)."""
    if len(ring) < 2:
        return None
    first = next((s for s in ring if s[0] >= since_unix_s), ring[-1])
    if first is ring[-1]:
        first = ring[-2]
    return _rate_from(first, ring[-1])


def _rate_from(first: tuple[float, float, float], last: tuple[float, float, float]):
    wall_s = last[0] - first[0]
    if wall_s <= 0:
        return None
    audio_s, busy_s = last[1] - first[1], last[2] - first[2]
    return {
        "window_s": wall_s,
        "audio_s": audio_s,
        "rtfx": audio_s / wall_s,
        "rtfx_busy": audio_s / busy_s if busy_s > 0 else None,
    }


# -- Ray side -------------------------------------------------------------------------


def drain_progress(reports: list[dict], running_replicas: int) -> tuple[bool, int]:
    """(every ingress replica is draining, most requests in flight at one) from the
    ingress replicas' fresh board reports. Not all draining until as many replicas as are
    running have reported ``draining`` (a report from before the drain says false)."""
    if running_replicas == 0:
        return True, 0
    draining = [r for r in reports if r.get("draining")]
    busy = max((int(r.get("in_flight", 0)) for r in reports), default=0)
    return len(draining) >= running_replicas and len(draining) == len(reports), busy


def delete_board(app_name: str) -> bool:
    """Kill the app's board (the app is gone: ``serve_app.online.run`` at its stop). A
    detached actor outlives the app otherwise, until the cluster stops."""
    import ray

    try:
        ray.kill(ray.get_actor(board_name(app_name), namespace=BOARD_NAMESPACE))
    except ValueError:  # never created
        return False
    return True


# A board no replica has reported to for this long belongs to an app that is gone (deleted
# other than by serve_app.online.run, e.g. left out of a redeployed config): it ends
# itself. Its tuning goes with it; a replica reporting later starts a new board.
BOARD_EXPIRE_AFTER_S = 3600.0


class _BoardActor(StatsBoard):
    """The board as a detached actor that ends itself after ``expire_after_s`` of silence."""

    def __init__(self, expire_after_s: float = BOARD_EXPIRE_AFTER_S, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._expire_after_s = expire_after_s
        watch = threading.Thread(target=self._expire, name="asr-board-expiry", daemon=True)
        watch.start()

    def _expire(self) -> None:
        import ray

        while True:
            time.sleep(min(60.0, self._expire_after_s / 4))
            if self.silent_s() > self._expire_after_s:
                logger.info("no replica reported for %.0f s: the stats board ends", self.silent_s())
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return


def get_board(app_name: str, expire_after_s: float = BOARD_EXPIRE_AFTER_S):
    """The app's board actor, created by whichever replica asks first."""
    import ray

    actor_cls = ray.remote(num_cpus=0)(_BoardActor)
    return actor_cls.options(  # type: ignore[attr-defined]
        name=board_name(app_name),
        namespace=BOARD_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(expire_after_s=expire_after_s)


class StatsPusher:
    """A daemon thread in a recognizer replica: report stats, apply newer tuning."""

    def __init__(
        self,
        *,
        app_name: str,
        model: str,
        replica_id: str,
        stats: Callable[[], dict],
        apply: Callable[[dict], None],
        loop: asyncio.AbstractEventLoop | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self._app_name = app_name
        self._model = model
        self._replica_id = replica_id
        self._stats = stats
        self._apply = apply
        self._loop = loop
        self._interval_s = interval_s
        self.applied_version = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asr-stats-pusher", daemon=True)

    def start(self) -> StatsPusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import ray

        board = None
        last_warning_s = -_WARN_EVERY_S
        while not self._stop.wait(self._interval_s):
            try:
                if board is None:
                    board = get_board(self._app_name)
                stats = {**self._stats(), "applied_version": self.applied_version}
                answer = ray.get(
                    board.publish.remote(self._model, self._replica_id, stats), timeout=10
                )
                if answer["version"] > self.applied_version:
                    self._apply_now(answer["settings"])
                    self.applied_version = answer["version"]
            except Exception as exc:  # the board restarting, a busy process: next tick
                now = time.monotonic()
                if now - last_warning_s >= _WARN_EVERY_S:  # visible, but not every second
                    logger.warning("stats push to the board failed (%r); retrying", exc)
                    last_warning_s = now
                board = None

    def _apply_now(self, settings: dict) -> None:
        if not settings:
            return
        if self._loop is None or not self._loop.is_running():
            self._apply(settings)
            return
        # reconfigure touches the batching objects of the replica's event loop: run it there.
        asyncio.run_coroutine_threadsafe(_call(self._apply, settings), self._loop).result(10)


async def _call(fn: Callable[[dict], None], arg: dict) -> None:
    fn(arg)


def gpu_memory() -> dict[str, int | None]:
    """This process's CUDA memory through torch when torch is loaded and on CUDA; else
    nulls (CPU replicas, and CTranslate2's own allocator, which torch cannot see)."""
    import sys

    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            return {
                "gpu_memory_allocated_bytes": int(torch.cuda.memory_allocated()),
                "gpu_max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated()),
            }
    except Exception:
        logger.debug("cuda memory unavailable", exc_info=True)
    return {"gpu_memory_allocated_bytes": None, "gpu_max_memory_allocated_bytes": None}


# -- the ingress's side ---------------------------------------------------------------


def parse_tune_body(body: object, model_names: dict[str, str]) -> tuple[str, dict[str, float]]:
    """``{"model", "max_batch_audio_s"?, "batch_wait_timeout_s"?}`` -> (canonical, settings)."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    unknown = set(body) - {"model", *TUNABLE}
    if unknown:
        raise InvalidRequestError(f"unknown fields {sorted(unknown)}", param=sorted(unknown)[0])
    model = body.get("model")
    if not isinstance(model, str) or model not in model_names:
        raise UnknownModelError(f"unknown model {model!r}", param="model")
    settings: dict[str, float] = {}
    for key in TUNABLE:
        if body.get(key) is None:
            continue
        value = body[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequestError(f"{key} must be a number", param=key)
        if key == "max_batch_audio_s" and not value > 0:
            raise InvalidRequestError(f"{key} must be > 0", param=key)
        if key == "batch_wait_timeout_s" and not 0 <= value <= 60:
            raise InvalidRequestError(f"{key} must be within [0, 60] s", param=key)
        settings[key] = float(value)
    if not settings:
        raise InvalidRequestError(f"give at least one of {list(TUNABLE)}")
    return model_names[model], settings


class SystemView:
    """What the ingress answers on ``/v1/system`` and ``/v1/tune`` (async, read-only on
    the ingress's own state: ``queued_audio_s(model)`` reads its admission controllers)."""

    def __init__(
        self,
        *,
        app_name: str,
        models: list[str],
        model_names: dict[str, str],
        queued_audio_s: Callable[[str], float],
        status_timeout_s: float = 10.0,
    ) -> None:
        self._app_name = app_name
        self._models = models
        self._model_names = model_names
        self._queued_audio_s = queued_audio_s
        self._status_timeout_s = status_timeout_s
        self._board = None
        # The last deployment states the controller gave, and when: answered (marked as
        # of then) when a later ``serve.status`` is slow, as under load it can be.
        self._last_deployments: tuple[float, dict[str, dict]] | None = None

    def _get_board(self):
        if self._board is None:
            self._board = get_board(self._app_name)
        return self._board

    async def _snapshot(self) -> dict[str, dict]:
        try:
            return await self._get_board().snapshot.remote()
        except Exception:
            self._board = None  # the board died (it is recreated on the next call)
            raise

    async def _deployments(self) -> dict[str, dict]:
        from ray import serve

        status = await asyncio.wait_for(
            asyncio.to_thread(serve.status), timeout=self._status_timeout_s
        )
        app = status.applications.get(self._app_name)
        if app is None:
            return {}
        return {
            name: {
                "status": str(getattr(dep.status, "value", dep.status)),
                "replica_states": {
                    str(getattr(k, "value", k)): int(v) for k, v in dict(dep.replica_states).items()
                },
            }
            for name, dep in app.deployments.items()
        }

    async def _deployments_or_last(self) -> tuple[dict[str, dict], float | None, str | None]:
        """(states, as-of time, error): a monitoring page must answer while the controller
        is busy, so a slow or failed ``serve.status`` gives the last states it gave (or
        none) with the reason, instead of failing the whole view."""
        try:
            deployments = await self._deployments()
        except Exception as exc:  # TimeoutError under load, a controller restart
            reason = f"serve.status: {type(exc).__name__}: {exc}".rstrip(": ")
            logger.warning("/v1/system: %s; answering the last known deployment states", reason)
            if self._last_deployments is None:
                return {}, None, reason
            as_of, last = self._last_deployments
            return last, as_of, reason
        now = time.time()
        self._last_deployments = (now, deployments)
        return deployments, now, None

    async def system(self) -> dict:
        (deployments, as_of, error), snapshot = await asyncio.gather(
            self._deployments_or_last(), self._snapshot()
        )
        models = {}
        for name in self._models:
            entry = snapshot.get(name) or {"replicas": [], "totals": _sum_replicas([])}
            entry = {key: value for key, value in entry.items() if key != "tuning"}
            entry["queued_audio_s"] = self._queued_audio_s(name)
            entry["queued_audio_s_scope"] = "this ingress replica"
            models[name] = entry
        return {
            "app": self._app_name,
            "time_unix_s": time.time(),
            "deployments": deployments,
            "deployments_as_of_unix_s": as_of,
            "deployments_error": error,
            "models": models,
        }

    async def tune_state(self) -> dict:
        snapshot = await self._snapshot()
        return {"models": {name: _tune_entry(snapshot.get(name)) for name in self._models}}

    async def tune(self, body: object, *, wait_s: float = 20.0) -> dict:
        """Ask every replica of the model for the settings; answer once they all run them
        (``applied_on_all`` false when some did not within ``wait_s``)."""
        model, settings = parse_tune_body(body, self._model_names)
        version = await self._get_board().set_tuning.remote(model, settings)
        deadline = time.monotonic() + wait_s
        while True:
            deployments = await self._deployments()
            running = (
                deployments.get(f"Recognizer-{model}", {}).get("replica_states", {}).get("RUNNING")
            )
            entry = _tune_entry((await self._snapshot()).get(model))
            applied = [r for r in entry["replicas"] if r["applied_version"] >= version]
            done = bool(applied) and len(applied) >= (running or 0)
            if done or time.monotonic() >= deadline:
                return {"model": model, "version": version, "applied_on_all": done, **entry}
            await asyncio.sleep(0.25)


def _tune_entry(model_snapshot: dict | None) -> dict:
    replicas = (model_snapshot or {}).get("replicas", [])
    tuning = (model_snapshot or {}).get("tuning", {"version": 0, "settings": {}})
    rows = [
        {
            "replica_id": r["replica_id"],
            "applied_version": int(r.get("applied_version", 0)),
            **{key: r.get(key) for key in TUNABLE},
        }
        for r in replicas
    ]
    in_force = {key: rows[0][key] for key in TUNABLE} if rows else {}
    return {
        "settings": {**in_force, **tuning["settings"]},
        "version": tuning["version"],
        "replicas": rows,
    }
