"""The graceful stop's question "is every ingress replica drained?", from the board (no Ray).

Every ingress replica reports ``{draining, in_flight}`` to the app's board; the stop
(serve_app.online.run) waits until as many replicas as Serve runs have said "draining" and
none has a request in flight. It used to ask through handle calls, which Serve routes to the
least-loaded replica: the busy one was the one least likely to be asked.
"""

from __future__ import annotations

from serve_app.online.system import INGRESS_KEY, StatsBoard, drain_progress


def _reports(board: StatsBoard) -> list[dict]:
    return board.snapshot()[INGRESS_KEY]["replicas"]


def test_the_busy_replica_keeps_the_drain_open_until_it_is_done():
    now = [0.0]
    board = StatsBoard(clock=lambda: now[0])
    board.publish(INGRESS_KEY, "idle", {"draining": True, "in_flight": 0})
    board.publish(INGRESS_KEY, "busy", {"draining": True, "in_flight": 1})
    assert drain_progress(_reports(board), running_replicas=2) == (True, 1)
    now[0] += 0.5
    board.publish(INGRESS_KEY, "busy", {"draining": True, "in_flight": 0})
    assert drain_progress(_reports(board), running_replicas=2) == (True, 0)


def test_a_replica_not_heard_from_since_the_drain_began_keeps_it_open():
    board = StatsBoard(clock=lambda: 0.0)
    board.publish(INGRESS_KEY, "a", {"draining": True, "in_flight": 0})
    # The second replica has not reported yet: not drained.
    assert drain_progress(_reports(board), running_replicas=2)[0] is False
    # It reported, but from before it got the drain flag.
    board.publish(INGRESS_KEY, "b", {"draining": False, "in_flight": 0})
    assert drain_progress(_reports(board), running_replicas=2)[0] is False
    board.publish(INGRESS_KEY, "b", {"draining": True, "in_flight": 0})
    assert drain_progress(_reports(board), running_replicas=2) == (True, 0)


def test_no_ingress_running_is_drained():
    assert drain_progress([], running_replicas=0) == (True, 0)
