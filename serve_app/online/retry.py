"""Retries of idempotent remote calls whose replica died, within a request's deadline.

Pure asyncio: the call, the clock, the sleep and the random source are injected, so the
policy (``RetrySettings`` of serve_app.config: the ``ingress.retry`` section as the config
file gives it) is unit-tested with fakes. :func:`is_replica_failure` is the one place that knows
which of Ray's errors mean "the replica went away, another (or its restart) may answer".

Measured on Ray 2.60 (SIGKILL of a Serve replica process mid-call): every call in flight
on it fails with ``ray.exceptions.ActorDiedError``; calls made after it are held by the
router until Serve's replacement replica is up (no error). A call routed just before the
router learns of the death can also see ``ActorUnavailableError``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from serve_app.config import RetrySettings
from serve_app.core.errors import AsrError, DeadlineExceededError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def is_replica_failure(exc: BaseException) -> bool:
    """True for errors that mean the replica (not the request) failed: worth a retry.

    Typed client/service errors (:class:`AsrError`) and back-pressure are never retried:
    retrying a 4xx cannot help, and retrying a shed request would defeat the shedding.
    """
    from ray import exceptions as ray_exceptions
    from ray.serve import exceptions as serve_exceptions

    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(current, (AsrError, serve_exceptions.BackPressureError)):
            return False
        if isinstance(current, serve_exceptions.RequestCancelledError):
            return False
        if isinstance(
            current,
            (
                ray_exceptions.RayActorError,  # ActorDiedError, ActorUnavailableError
                ray_exceptions.WorkerCrashedError,
                ray_exceptions.NodeDiedError,
                serve_exceptions.DeploymentUnavailableError,
                serve_exceptions.ReplicaUnavailableError,
            ),
        ):
            return True
        current = getattr(current, "cause", None) or current.__cause__
        seen += 1
    return False


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetrySettings,
    deadline_unix_s: float | None,
    retryable: Callable[[BaseException], bool] = is_replica_failure,
    what: str = "call",
    on_retry: Callable[[BaseException], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Await ``call()``; on a retryable error wait and call again, at most
    ``policy.max_attempts`` times in all and never past ``deadline_unix_s``.

    Each attempt is bounded by the time left: when the deadline passes during an attempt
    it is cancelled (which cancels the remote call) and :class:`DeadlineExceededError` is
    raised; so is it when the next backoff would end after the deadline. A non-retryable
    error, or the last attempt's error, propagates unchanged.
    """
    attempt = 0
    while True:
        attempt += 1
        remaining_s = None if deadline_unix_s is None else deadline_unix_s - clock()
        if remaining_s is not None and remaining_s <= 0:
            raise DeadlineExceededError(f"{what}: the request's deadline passed")
        scope = asyncio.timeout(remaining_s)
        try:
            async with scope:
                return await call()
        except TimeoutError as exc:
            if not scope.expired():  # the call's own timeout, not our deadline
                raise
            raise DeadlineExceededError(f"{what}: the request's deadline passed") from exc
        except Exception as exc:
            if attempt >= policy.max_attempts or not retryable(exc):
                raise
            wait_s = policy.backoff_s(attempt, rand())
            if deadline_unix_s is not None and clock() + wait_s >= deadline_unix_s:
                raise DeadlineExceededError(
                    f"{what}: the request's deadline passed while its replica was "
                    f"unavailable ({type(exc).__name__})"
                ) from exc
            logger.warning(
                "%s failed on attempt %d (%s); retrying in %.2f s",
                what,
                attempt,
                type(exc).__name__,
                wait_s,
            )
            if on_retry is not None:
                on_retry(exc)
            await sleep(wait_s)
