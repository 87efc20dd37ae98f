"""The graceful stop's question "is every ingress replica drained?", from the board (no Ray).

Every ingress replica reports ``{draining, in_flight}`` to the app's board; the stop
(serve_app.online.run) waits until as many replicas as Serve runs have said "draining" and
none has a request in flight. It used to ask through handle calls, which Serve routes to the
least-loaded replica: the busy one was the one least likely to be asked.
"""

from __future__ import annotations

import time

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


def test_the_board_of_a_gone_app_is_deleted(ray_cluster):
    """The runner deletes each app's detached board at its stop (serve_app.online.run);
    without that it outlived the app until the cluster stopped."""
    import ray

    from serve_app.online.system import BOARD_NAMESPACE, board_name, delete_board, get_board

    board = get_board("asr_board_cleanup_test")
    ray.get(board.publish.remote("m", "r1", {"audio_s": 1.0}))
    assert delete_board("asr_board_cleanup_test")
    deadline = time.monotonic() + 30
    while True:
        try:
            ray.get_actor(board_name("asr_board_cleanup_test"), namespace=BOARD_NAMESPACE)
        except ValueError:
            break  # gone
        assert time.monotonic() < deadline, "the board is still alive"
        time.sleep(0.2)
    assert not delete_board("asr_board_cleanup_test")  # nothing left to delete


def test_a_board_nobody_reports_to_ends_itself(ray_cluster):
    """An app deleted other than by the runner (left out of a redeployed config) leaves
    its board behind: after ``expire_after_s`` without a report it ends itself, and a
    replica reporting later gets a new one. A board still reported to lives on."""
    import ray

    from serve_app.online.system import BOARD_NAMESPACE, board_name, delete_board, get_board

    quiet, busy = "asr_board_expiry_quiet", "asr_board_expiry_busy"
    get_board(quiet, expire_after_s=2.0)
    kept = get_board(busy, expire_after_s=2.0)
    deadline = time.monotonic() + 60
    while True:
        ray.get(kept.publish.remote("m", "r1", {"audio_s": 1.0}))
        try:
            ray.get_actor(board_name(quiet), namespace=BOARD_NAMESPACE)
        except ValueError:
            break  # gone
        assert time.monotonic() < deadline, "the silent board is still alive"
        time.sleep(0.5)
    assert ray.get(kept.num_replicas_known.remote()) == 1  # reported to: alive
    again = get_board(quiet, expire_after_s=2.0)
    assert ray.get(again.num_replicas_known.remote()) == 0  # a new board
    assert delete_board(quiet) and delete_board(busy)


def test_silence_is_counted_from_the_last_report():
    now = [100.0]
    board = StatsBoard(clock=lambda: now[0])
    now[0] = 130.0
    assert board.silent_s() == 30.0  # since creation
    board.publish("m", "r1", {})
    now[0] = 135.0
    assert board.silent_s() == 5.0
