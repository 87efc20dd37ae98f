"""The load scripts' recognizer counters: every replica summed (``/v1/system``), not the one
replica ``/v1/stats`` happens to be routed to (a two-replica row reported half its
batches); ``/v1/stats`` where the server has no replica reports yet."""

from __future__ import annotations

import asyncio

import httpx

from scripts.common.http import service_stats

ONE_REPLICA = {"m": {"batch_size_counts": {"4": 1}, "audio_s": 10.0, "padded_s": 11.0}}
BOTH = {"batch_size_counts": {"4": 1, "6": 2}, "audio_s": 31.0, "padded_s": 33.0}


def stats(system: dict) -> dict:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/system":
            return httpx.Response(200, json=system)
        return httpx.Response(200, json=ONE_REPLICA)

    async def fetch() -> dict:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            return await service_stats(http, "http://test/")

    return asyncio.run(fetch())


def test_counters_of_every_replica():
    system = {"models": {"m": {"replicas": [{}, {}], "totals": BOTH}}}
    assert stats(system) == {"m": BOTH}


def test_one_replicas_counters_until_the_board_has_reports():
    assert stats({"models": {"m": {"replicas": [], "totals": {}}}}) == ONE_REPLICA
    assert stats({}) == ONE_REPLICA
