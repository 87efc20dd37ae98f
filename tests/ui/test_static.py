"""The static UI module and the stats board, without Ray."""

from __future__ import annotations

import pytest

from serve_app.core.errors import InvalidRequestError, UnknownModelError
from serve_app.online.system import StatsBoard, parse_tune_body
from serve_app.online.ui import STATIC_DIR, StaticUi


def test_assets_have_media_types_and_index_gets_the_prefix_as_base():
    site = StaticUi()
    assert {"index.html", "app.js", "app.css"} <= set(site.names())
    page = site.response("/", "/asr")
    assert page.status_code == 200
    assert page.media_type.startswith("text/html")
    assert b'<base href="/asr/ui/">' in page.body
    assert site.response("/ui", "").body.count(b'<base href="/ui/">') == 1
    assert site.response("/ui/app.js").media_type.startswith("text/javascript")
    assert site.response("/ui/app.css").media_type.startswith("text/css")
    # The Live tab's script and its AudioWorklet module (addModule needs a JS type).
    for name in ("live.js", "pcm-worklet.js"):
        assert site.response("/ui/" + name).media_type.startswith("text/javascript"), name
    assert page.headers["cache-control"] == "no-cache"


def test_etag_revalidation():
    site = StaticUi()
    first = site.response("/ui/app.js")
    again = site.response("/ui/app.js", "", first.headers["etag"])
    assert again.status_code == 304 and again.body == b""


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../ui.py",
        "/ui/..%2fui.py",
        "/ui/%2e%2e/config.py",
        "/ui//etc/passwd",
        "/ui/nope.js",
        "/ui/static/app.js",
    ],
)
def test_nothing_outside_the_allow_list(path):
    assert StaticUi().response(path).status_code == 404


def test_no_external_urls_in_the_ui():
    # Offline by construction: no CDN, no remote font or script.
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, path.name


def test_board_sums_replicas_and_survives_a_restart():
    now = [1000.0]
    board = StatsBoard(clock=lambda: now[0])
    board.publish(
        "m",
        "a",
        {
            "items": 2,
            "audio_s": 10.0,
            "busy_s": 1.0,
            "padded_s": 20.0,
            "num_batches": 1,
            "batch_size_counts": {2: 1},
        },
    )
    board.publish(
        "m",
        "b",
        {
            "items": 3,
            "audio_s": 5.0,
            "busy_s": 1.0,
            "padded_s": 5.0,
            "num_batches": 2,
            "batch_size_counts": {1: 1, 2: 1},
            "errors": {"recognition_failed": 1},
        },
    )
    now[0] += 10
    board.publish(
        "m",
        "a",
        {
            "items": 4,
            "audio_s": 30.0,
            "busy_s": 2.0,
            "padded_s": 40.0,
            "num_batches": 2,
            "batch_size_counts": {2: 2},
        },
    )
    snap = board.snapshot()["m"]
    assert snap["totals"]["items"] == 7
    assert snap["totals"]["batch_size_counts"] == {1: 1, 2: 3}
    assert snap["totals"]["errors"] == {"recognition_failed": 1}
    assert snap["totals"]["padding_efficiency"] == pytest.approx(35 / 45)
    assert snap["rtfx"]["rtfx"] == pytest.approx(20 / 10)  # a's 20 new audio s in 10 s
    # Replica a restarts: its counters start from 0 again; the monotonic totals keep going.
    now[0] += 10
    board.publish("m", "a", {"items": 1, "audio_s": 4.0, "busy_s": 0.5, "padded_s": 4.0})
    assert board.snapshot()["m"]["cumulative"]["audio_s"] == pytest.approx(10 + 5 + 20 + 4)
    # b is silent for longer than stale_after_s: no longer counted as a live replica.
    assert [r["replica_id"] for r in board.snapshot()["m"]["replicas"]] == ["a"]


def test_board_tuning_versions():
    board = StatsBoard()
    assert board.publish("m", "a", {})["version"] == 0
    version = board.set_tuning("m", {"batch_wait_timeout_s": 0.5})
    answer = board.publish("m", "a", {})
    assert answer == {"version": version, "settings": {"batch_wait_timeout_s": 0.5}}
    board.set_tuning("m", {"max_batch_audio_s": 100.0})
    assert board.tuning("m")["settings"] == {
        "batch_wait_timeout_s": 0.5,
        "max_batch_audio_s": 100.0,
    }


def test_tune_body_validation():
    names = {"m": "m", "alias": "m"}
    assert parse_tune_body({"model": "alias", "batch_wait_timeout_s": 0}, names) == (
        "m",
        {"batch_wait_timeout_s": 0.0},
    )
    with pytest.raises(UnknownModelError):
        parse_tune_body({"model": "x", "batch_wait_timeout_s": 1}, names)
    for bad in (
        {"model": "m"},
        {"model": "m", "max_batch_audio_s": 0},
        {"model": "m", "batch_wait_timeout_s": "1"},
        {"model": "m", "oops": 1},
        [1],
    ):
        with pytest.raises(InvalidRequestError):
            parse_tune_body(bad, names)


def test_gpu_memory_reads_torch_cuda_only_when_in_use(monkeypatch):
    import types

    from serve_app.online.system import gpu_memory

    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        memory_allocated=lambda: 123,
        max_memory_allocated=lambda: 456,
    )
    monkeypatch.setitem(__import__("sys").modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert gpu_memory() == {
        "gpu_memory_allocated_bytes": 123,
        "gpu_max_memory_allocated_bytes": 456,
    }
    cuda.is_initialized = lambda: False  # CPU replica, or CUDA never touched: no numbers
    assert gpu_memory()["gpu_memory_allocated_bytes"] is None


def test_a_changed_config_clears_the_tuning():
    board = StatsBoard()
    old = {"args": {"batch_wait_timeout_s": 0.2}, "user_config": {}}
    board.publish("m", "a", {"configured": old})
    board.set_tuning("m", {"batch_wait_timeout_s": 0.5})
    # A replica of the same config (autoscaled, restarted) gets the tuning.
    assert board.publish("m", "b", {"configured": old})["settings"] == {"batch_wait_timeout_s": 0.5}
    # A redeploy with another configured wait: the config wins.
    new = {"args": {"batch_wait_timeout_s": 0.3}, "user_config": {}}
    answer = board.publish("m", "c", {"configured": new})
    assert answer["settings"] == {} and board.tuning("m")["settings"] == {}


def test_board_forgets_replicas_that_are_gone():
    """Replicas come and go (restarts, autoscaling): the board keeps the live ones only,
    and a replica back from a pause shorter than that is not counted twice."""
    now = [0.0]
    board = StatsBoard(clock=lambda: now[0], stale_after_s=10.0, forget_after_s=60.0)
    for i in range(50):  # fifty replicas lived and died, one after another
        now[0] = i * 30.0
        board.publish("m", f"replica-{i}", {"audio_s": 1.0, "busy_s": 0.5})
    assert board.num_replicas_known() <= 3
    now[0] += 30.0  # the newest one pauses for 30 s, then reports the same totals
    board.publish("m", "replica-49", {"audio_s": 1.0, "busy_s": 0.5})
    assert board.snapshot()["m"]["cumulative"]["audio_s"] == 50.0


def test_system_view_answers_while_serve_status_is_slow():
    """The CI failure of 2026-12-06: under load ``serve.status`` overran its timeout and
    ``/v1/system`` answered an error. The view answers the board's numbers with the last
    deployment states it had, says as of when, and why they are not fresh."""
    import asyncio

    from serve_app.online.system import SystemView

    board = StatsBoard()

    class _Board:
        class snapshot:  # the actor method's shape: ``.remote()``
            @staticmethod
            async def remote():
                return board.snapshot()

    view = SystemView(
        app_name="a", models=["m"], model_names={"m": "m"}, queued_audio_s=lambda _: 0
    )
    view._get_board = lambda: _Board()  # type: ignore[method-assign]
    states = {"Recognizer-m": {"status": "HEALTHY", "replica_states": {"RUNNING": 1}}}
    answers: list = [states, TimeoutError()]

    async def deployments():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    view._deployments = deployments  # type: ignore[method-assign]
    fresh = asyncio.run(view.system())
    assert fresh["deployments"] == states and fresh["deployments_error"] is None
    slow = asyncio.run(view.system())
    assert "m" in slow["models"] and slow["deployments"] == states
    assert slow["deployments_as_of_unix_s"] == fresh["deployments_as_of_unix_s"]
    assert "TimeoutError" in slow["deployments_error"]
