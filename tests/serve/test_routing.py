"""A burst of calls from one replica to a deployment of two is spread over both
(serve_app.online.routing.BalancedRouter): Ray 2.60's own router sent every call of a burst
to the same replica, as it did with a long file's segments."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import pytest
from ray import serve

from serve_app.online.routing import ROUTER_CLASS

APP = "routing-burst"
BURST = 40


@serve.deployment(num_replicas=2, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class Sink:
    async def work(self, _: int) -> str:
        await asyncio.sleep(0.3)  # still queued there while the rest of the burst is routed
        return serve.get_replica_context().replica_id.unique_id


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Burst:
    """Calls the sink from inside a replica, as the ingress calls a recognizer."""

    def __init__(self, sink) -> None:
        self._sink = sink

    async def burst(self, n: int) -> dict[str, int]:
        replicas = await asyncio.gather(*(self._sink.work.remote(i) for i in range(n)))
        return dict(Counter(replicas))


def router_class() -> str:
    # ASR_TEST_ROUTER=ray.serve._private.request_router.pow_2_router.PowerOfTwoChoicesRequestRouter
    # runs this test against Ray's own router (it fails: 40 calls to one replica).
    return os.environ.get("ASR_TEST_ROUTER", ROUTER_CLASS)


@pytest.fixture(scope="module")
def burst_app(serve_instance):
    config = {"request_router_config": {"request_router_class": router_class()}}
    app = Burst.bind(Sink.options(**config).bind())
    handle = serve.run(app, name=APP, route_prefix=None)
    yield handle
    serve.delete(APP)


def test_a_burst_is_spread_over_both_replicas(burst_app):
    burst_app.burst.remote(4).result(timeout_s=60)  # both replicas known, counts cached
    # Ray's own router piled up about a third of such bursts here (39/1, 34/6), the rest
    # raced its routing loop and came out even: ten bursts, so its failure shows.
    for _ in range(10):
        counts = burst_app.burst.remote(BURST).result(timeout_s=60)
        assert sum(counts.values()) == BURST
        # Power of two choices over two replicas with right counts alternates: 20/20,
        # give or take the replies that arrive during the burst.
        assert len(counts) == 2 and min(counts.values()) >= BURST // 4, counts
