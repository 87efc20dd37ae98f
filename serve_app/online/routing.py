"""Which replica of a deployment gets a call: Ray Serve's power-of-two-choices router,
with the count of a replica's calls kept right while a burst is routed.

Ray 2.60's router compares replicas by a cached count of their ongoing calls, but a call
is counted only once it has been *sent*, and the sends of a burst run after all of its
routing decisions (each decision only resolves a future that the caller then awaits). The
segments of one long file reach the router within a few milliseconds, so every one of them
saw the same counts and went to the same replica: measured on the SenseVoice 10-minute
benchmark (2 recognizer replicas), 40 segments in 130 ms all to one replica in half the
runs, 55 items against 17 in all, RTFx 18-21 instead of 26, the other replica idle for
the last 10-20 s. A second error of the same kind: each replica's accept message carries
its count *when it accepted*, which overwrote the cache although later sends to it were
still on their way (ray-project/ray#42948).

:class:`BalancedRouter` counts a call when its replica is chosen, and adds the calls sent
but not yet accepted to a replica's reported count. The choice itself (two random
candidates, the less loaded one; locality and model multiplexing) is Ray's. The hooks it
overrides are Ray 2.60 internals (``_select_from_candidate_replicas``, the cache); the
version is pinned, and ``tests/serve/test_routing.py`` fails if a burst piles up again.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque

from ray.serve._private.common import ReplicaID
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve._private.request_router.replica_wrapper import RunningReplica

# A chosen call is sent within milliseconds and accepted soon after; marks older than
# these are forgotten (a call cancelled while it was routed, a replica that died).
CHOSEN_TTL_S = 1.0
SENT_TTL_S = 5.0

ROUTER_CLASS = f"{__name__}.BalancedRouter"


class BalancedRouter(PowerOfTwoChoicesRequestRouter):
    """Power of two choices whose queue counts include calls chosen or sent, not yet
    accepted (see the module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        # Before Ray's __init__, in case it already hands over replicas (update_replicas).
        self._chosen: defaultdict[ReplicaID, deque[float]] = defaultdict(deque)
        self._sent: defaultdict[ReplicaID, deque[float]] = defaultdict(deque)
        super().__init__(*args, **kwargs)

    @staticmethod
    def _live(marks: deque[float], ttl_s: float) -> deque[float]:
        cutoff = time.monotonic() - ttl_s
        while marks and marks[0] < cutoff:
            marks.popleft()
        return marks

    async def _select_from_candidate_replicas(
        self, candidates: list[RunningReplica], backoff_index: int
    ) -> RunningReplica | None:
        replica = await super()._select_from_candidate_replicas(candidates, backoff_index)
        if replica is not None and self._counts_cached:
            # Counted now: the next decision of the same burst sees it.
            cache = self.replica_queue_len_cache
            cache.update(replica.replica_id, (cache.get(replica.replica_id) or 0) + 1)
            self._chosen[replica.replica_id].append(time.monotonic())
        return replica

    @property
    def _counts_cached(self) -> bool:
        # Ray's own switch (False in Ray Client's context: then no counts at all).
        return bool(getattr(self, "_use_replica_queue_len_cache", False))

    def on_send_request(self, replica_id: ReplicaID) -> None:
        if not self._counts_cached:
            return
        self._sent[replica_id].append(time.monotonic())
        chosen = self._live(self._chosen[replica_id], CHOSEN_TTL_S)
        if chosen:
            chosen.popleft()  # counted when it was chosen
        else:
            super().on_send_request(replica_id)

    def on_new_queue_len_info(self, replica_id: ReplicaID, num_ongoing_requests: int) -> None:
        # The replica's count when it accepted (or rejected) one of our calls: the calls
        # sent after that one, and those chosen but not sent, are not in it yet.
        sent = self._live(self._sent[replica_id], SENT_TTL_S)
        if sent:
            sent.popleft()
        chosen = self._live(self._chosen[replica_id], CHOSEN_TTL_S)
        super().on_new_queue_len_info(replica_id, num_ongoing_requests + len(sent) + len(chosen))

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        # Replicas scaled away (not only dead ones) leave no marks behind.
        live = {replica.replica_id for replica in replicas}
        for marks in (self._chosen, self._sent):
            for replica_id in [r for r in marks if r not in live]:
                del marks[replica_id]
        super().update_replicas(replicas)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        self._chosen.pop(replica_id, None)
        self._sent.pop(replica_id, None)
        super().on_replica_actor_died(replica_id)


# Ray Serve's HAProxy mode (``python -m serve_app.online.run --haproxy``): HAProxy on the
# HTTP port forwards each connection to an ingress replica's own HTTP server (Ray's
# "direct ingress"), so a websocket message or an upload no longer crosses the Serve proxy
# actor and an actor call (docs/DEPLOY.md, "HAProxy"). Read by Ray when the cluster starts.
# The drain wait is ours (run.py drains the app first); Ray's default holds a stop 30 s.
HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}


def haproxy_enabled() -> bool:
    """Whether Ray Serve's HAProxy mode is on (read from the environment, as Ray does)."""
    return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "0") == "1"
