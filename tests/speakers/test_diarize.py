"""The pure diarization steps: windows, clustering, smoothing, turns, assignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from serve_app.core import diarization as dz
from serve_app.core.errors import InvalidRequestError
from serve_app.core.speaker_request import assign_speakers
from serve_app.core.types import WordTiming


def synthetic_embeddings(
    counts: list[int], *, dim: int = 32, noise: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows around one random direction per speaker, shuffled in time; (rows, truth)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(counts), dim))
    truth = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    rng.shuffle(truth)
    rows = centers[truth] + noise * rng.standard_normal((len(truth), dim))
    return rows.astype(np.float32), truth


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the labels."""
    pairs = itertools.combinations(range(len(a)), 2)
    return all((a[i] == a[j]) == (b[i] == b[j]) for i, j in pairs)


# ---------------------------------------------------------------- windows


def test_windows_cover_each_span_and_never_cross_spans() -> None:
    spans = [(0.0, 1.0), (2.0, 6.1), (7.0, 8.5)]
    windows = dz.embedding_windows(spans, window_s=1.5, hop_s=0.75)
    assert windows[0] == dz.TimeWindow(0.0, 1.0)  # shorter than a window: one of its own
    inner = [w for w in windows if 2.0 <= w.start_s < 6.1]
    assert inner[0].start_s == 2.0 and inner[-1].end_s == pytest.approx(6.1)
    assert all(w.duration_s == pytest.approx(1.5) for w in inner)
    hops = [b.start_s - a.start_s for a, b in zip(inner, inner[1:])]
    assert max(hops) <= 0.75 + 1e-9
    assert windows[-1] == dz.TimeWindow(7.0, 8.5)  # exactly one window long
    for w in windows:
        assert any(a - 1e-9 <= w.start_s and w.end_s <= b + 1e-9 for a, b in spans)


def test_window_audio_cuts_the_samples() -> None:
    samples = np.arange(32_000, dtype=np.float32)
    cut = dz.window_audio(samples, [dz.TimeWindow(0.5, 1.0)])
    assert cut[0][0] == 8_000 and len(cut[0]) == 8_000


# ---------------------------------------------------------------- clustering


@pytest.mark.parametrize("counts", [[12, 9], [10, 8, 6], [7, 7, 7, 7]])
def test_threshold_clustering_finds_the_speakers(counts: list[int]) -> None:
    rows, truth = synthetic_embeddings(counts)
    labels = dz.cluster_embeddings(rows)
    assert len(set(labels.tolist())) == len(counts)
    assert same_partition(labels, truth)
    assert labels[0] == 0  # numbered in order of first appearance


def test_num_speakers_forces_the_count_and_min_max_clamp_it() -> None:
    rows, truth = synthetic_embeddings([10, 8, 6])
    assert len(set(dz.cluster_embeddings(rows, dz.DiarizationOptions(num_speakers=2)))) == 2
    clamped = dz.cluster_embeddings(rows, dz.DiarizationOptions(max_speakers=2))
    assert len(set(clamped.tolist())) == 2
    one_speaker, _ = synthetic_embeddings([20], seed=3)
    assert len(set(dz.cluster_embeddings(one_speaker).tolist())) == 1
    forced = dz.cluster_embeddings(one_speaker, dz.DiarizationOptions(min_speakers=2))
    assert len(set(forced.tolist())) == 2
    # An untouched count inside the bounds stays what the threshold found.
    bounded = dz.cluster_embeddings(rows, dz.DiarizationOptions(min_speakers=2, max_speakers=4))
    assert same_partition(bounded, truth)


def test_degenerate_inputs() -> None:
    assert dz.cluster_embeddings(np.zeros((0, 8))).tolist() == []
    assert dz.cluster_embeddings(np.ones((1, 8))).tolist() == [0]
    rows, _ = synthetic_embeddings([1, 1])
    assert len(set(dz.cluster_embeddings(rows, dz.DiarizationOptions(num_speakers=5)))) == 2


def test_short_windows_join_the_nearest_cluster_and_tiny_clusters_fold() -> None:
    rows, truth = synthetic_embeddings([10, 10], noise=0.2)
    durations = np.full(len(rows), 1.5)
    durations[:3] = 0.3  # too short to shape the clusters, still labelled
    labels = dz.cluster_embeddings(rows, durations_s=durations)
    assert same_partition(labels, truth)
    # A third "speaker" of two odd windows (3 s of talk < min_speaker_s = 4 s) is folded.
    odd, _ = synthetic_embeddings([2], noise=0.05, seed=9)
    settings = dz.DiarizationSettings(min_speaker_s=4.0)
    with_odd = np.concatenate([rows, odd])
    folded = dz.cluster_embeddings(with_odd, settings=settings, durations_s=[1.5] * 22)
    assert len(set(folded.tolist())) == 2
    kept = dz.cluster_embeddings(
        with_odd, dz.DiarizationOptions(num_speakers=3), settings, durations_s=[1.5] * 22
    )
    assert len(set(kept.tolist())) == 3


@pytest.mark.parametrize(
    "options",
    [
        {"num_speakers": 0},
        {"min_speakers": 3, "max_speakers": 2},
        {"num_speakers": 5, "max_speakers": 4},
        {"num_speakers": 1, "min_speakers": 2},
    ],
)
def test_bad_speaker_counts_are_400s(options: dict) -> None:
    with pytest.raises(InvalidRequestError):
        dz.DiarizationOptions(**options)


# ---------------------------------------------------------------- turns


def test_smoothing_removes_one_window_flickers_within_a_span_only() -> None:
    assert dz.smooth_labels([0, 0, 1, 0, 0], [0] * 5, 3) == [0, 0, 0, 0, 0]
    assert dz.smooth_labels([0, 0, 1, 1, 1], [0] * 5, 3) == [0, 0, 1, 1, 1]
    # A lone window that is its own span is not outvoted by other spans.
    assert dz.smooth_labels([0, 1, 0], [0, 1, 2], 3) == [0, 1, 0]


def test_turns_change_halfway_between_window_centres() -> None:
    spans = [(0.0, 4.5), (5.0, 6.0)]
    windows = dz.embedding_windows(spans, window_s=1.5, hop_s=0.75)
    # 5 windows in the first span (centres 0.75 .. 3.75), one in the second.
    assert len(windows) == 6
    settings = dz.DiarizationSettings(smoothing_windows=1, min_turn_s=0.1)
    turns = dz.speaker_turns(windows, [0, 0, 0, 1, 1, 1], spans, settings)
    assert [(t.speaker, t.start_s, t.end_s) for t in turns] == [
        ("speaker_1", 0.0, pytest.approx(2.625)),
        ("speaker_2", pytest.approx(2.625), 4.5),
        ("speaker_2", 5.0, 6.0),
    ]
    talk = dz.talk_time_s(turns)
    assert talk == {"speaker_1": pytest.approx(2.625), "speaker_2": pytest.approx(2.875)}


def test_a_short_turn_inside_a_span_is_absorbed() -> None:
    spans = [(0.0, 6.0)]
    windows = dz.embedding_windows(spans, window_s=1.5, hop_s=0.75)
    labels = [0] * len(windows)
    labels[3] = 1
    settings = dz.DiarizationSettings(smoothing_windows=1, min_turn_s=1.0)
    turns = dz.speaker_turns(windows, labels, spans, settings)
    assert [(t.speaker, t.start_s, t.end_s) for t in turns] == [("speaker_1", 0.0, 6.0)]


def test_diarize_runs_the_steps_with_an_embed_function() -> None:
    rows, _ = synthetic_embeddings([1, 1], noise=0.0)
    samples = np.concatenate([np.zeros(48_000, np.float32), np.ones(48_000, np.float32)])

    def embed(windows: list[np.ndarray]) -> np.ndarray:
        return np.stack([rows[int(w.mean() > 0.5)] for w in windows])

    result = dz.diarize(samples, [(0.0, 3.0), (3.0, 6.0)], embed)
    assert [(t.speaker, t.start_s, t.end_s) for t in result.turns] == [
        ("speaker_1", 0.0, 3.0),
        ("speaker_2", 3.0, 6.0),
    ]
    assert result.speakers == ["speaker_1", "speaker_2"]
    assert dz.diarize(samples, [], embed).turns == ()


# ---------------------------------------------------------------- assignment

TURNS = [
    dz.SpeakerTurn(0.0, 4.0, "speaker_1"),
    dz.SpeakerTurn(4.0, 8.0, "speaker_2"),
    dz.SpeakerTurn(9.0, 12.0, "speaker_1"),
]


def test_a_segment_inside_one_turn_keeps_its_text() -> None:
    out = assign_speakers([(0.5, 3.5, "hello there", ())], TURNS)
    assert [(s.start_s, s.end_s, s.text, s.speaker) for s in out] == [
        (0.5, 3.5, "hello there", "speaker_1")
    ]
    # In a gap between turns: the nearest turn's speaker.
    assert assign_speakers([(8.2, 8.4, "hm", ())], TURNS)[0].speaker == "speaker_2"
    assert assign_speakers([(0.0, 1.0, "x", ())], [])[0].speaker is None


def test_a_segment_over_a_change_splits_at_the_first_word_of_the_new_speaker() -> None:
    words = (
        WordTiming(2.0, 2.5, " how"),
        WordTiming(2.6, 3.0, " are"),
        WordTiming(3.1, 3.8, " you?"),
        WordTiming(4.2, 4.6, " fine,"),
        WordTiming(4.7, 5.5, " thanks."),
    )
    out = assign_speakers([(1.9, 5.6, "how are you? fine, thanks.", words)], TURNS)
    assert [(s.start_s, s.end_s, s.text, s.speaker) for s in out] == [
        (1.9, 4.2, "how are you?", "speaker_1"),
        (4.2, 5.6, "fine, thanks.", "speaker_2"),
    ]
    assert out[0].words == words[:3] and out[1].words == words[3:]


def test_without_words_the_text_is_split_at_the_turn_boundary_by_time() -> None:
    text = "one two three four five six seven eight"
    out = assign_speakers([(2.0, 6.0, text, ())], TURNS)
    assert [(s.start_s, s.end_s, s.speaker) for s in out] == [
        (2.0, 4.0, "speaker_1"),
        (4.0, 6.0, "speaker_2"),
    ]
    assert [s.text for s in out] == ["one two three four", "five six seven eight"]
    # Chinese (no spaces) is split by characters; a sliver under min_piece_s is not split off.
    cjk = assign_speakers([(3.0, 7.0, "今天天气很好", ())], TURNS)
    assert [s.text for s in cjk] == ["今天", "天气很好"]
    sliver = assign_speakers([(3.8, 7.0, "a b c", ())], TURNS, min_piece_s=0.5)
    assert [(s.text, s.speaker) for s in sliver] == [("a b c", "speaker_2")]
