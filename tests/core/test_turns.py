"""Turn detection over speech probabilities (serve_app.core.turns): pure logic."""

from __future__ import annotations

from serve_app.core.turns import TurnDetector, TurnEvent, TurnSettings

W = 32  # ms per window


def run(probs: list[float], **settings) -> list[TurnEvent]:
    detector = TurnDetector(TurnSettings(**settings), window_ms=W)
    return detector.push(probs)


def test_start_is_the_first_speech_window_and_stop_the_last_after_the_silence():
    probs = [0.0] * 10 + [0.9] * 20 + [0.0] * 20
    events = run(probs, silence_duration_ms=500)
    assert events == [TurnEvent("started", 10 * W), TurnEvent("stopped", 30 * W)]


def test_a_pause_shorter_than_the_silence_duration_keeps_the_turn():
    probs = [0.9] * 10 + [0.0] * 10 + [0.9] * 10 + [0.0] * 20
    events = run(probs, silence_duration_ms=500)  # 10 windows = 320 ms < 500
    assert [e.kind for e in events] == ["started", "stopped"]
    assert events[1].at_ms == 30 * W


def test_a_click_shorter_than_min_speech_is_no_turn():
    assert run([0.0] * 5 + [0.9] * 3 + [0.0] * 30, min_speech_ms=160) == []
    # The same click followed by real speech inside the turn: one turn from the click.
    events = run([0.9] * 3 + [0.0] * 5 + [0.9] * 10 + [0.0] * 20, min_speech_ms=160)
    assert events[0] == TurnEvent("started", 0)


def test_hysteresis_windows_between_thresholds_do_not_end_the_turn():
    # 0.4 is below threshold 0.5 but above 0.5 - 0.15: neither speech nor silence.
    probs = [0.9] * 10 + [0.4] * 30 + [0.0] * 20
    events = run(probs, silence_duration_ms=500)
    assert [e.kind for e in events] == ["started", "stopped"]
    assert events[1].at_ms == 10 * W  # the last window that was speech


def test_a_long_turn_is_cut_at_its_deepest_pause_in_the_last_third():
    # 2 s turns max; a dip at window 50 (1.6 s), inside the last third of 62 windows.
    probs = [0.9] * 50 + [0.2] + [0.9] * 11 + [0.9] * 30 + [0.0] * 20
    events = run(probs, max_turn_ms=2000, silence_duration_ms=500)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and "cut" in kinds and kinds[-1] == "stopped"
    cut = next(e for e in events if e.kind == "cut")
    assert cut.at_ms == 51 * W  # the end of the dip window
    assert kinds.count("started") == 1  # speech goes on without a new start


def test_events_do_not_depend_on_how_the_windows_are_chunked():
    probs = ([0.0] * 7 + [0.8] * 13 + [0.1] * 17) * 4
    whole = run(probs)
    detector = TurnDetector(TurnSettings(), window_ms=W)
    chunked: list[TurnEvent] = []
    for i in range(0, len(probs), 5):
        chunked += detector.push(probs[i : i + 5])
    assert chunked == whole and len(whole) == 8


def test_reset_forgets_the_turn_but_not_the_time():
    detector = TurnDetector(TurnSettings(), window_ms=W)
    detector.push([0.9] * 10)
    detector.reset()
    events = detector.push([0.0] * 20 + [0.9] * 10)
    assert events == [TurnEvent("started", 30 * W)]
