import numpy as np

from serve_app.core.segmentation import (
    PauseSettings,
    SpeechSegment,
    find_pauses_ms,
    merge_close,
    pack_pieces,
    pack_segments,
    pad_spans,
    postprocess_spans,
    split_long,
)


def test_pad_clamps_to_audio():
    segs = pad_spans([(50, 1000), (1900, 2000)], pad_ms=100, total_ms=2050)
    assert segs == [SpeechSegment(0, 1100), SpeechSegment(1800, 2050)]


def test_merge_close_neighbours_within_max():
    segs = [SpeechSegment(0, 1000), SpeechSegment(1200, 2000), SpeechSegment(5000, 6000)]
    merged = merge_close(segs, merge_gap_ms=300, max_segment_ms=30_000)
    assert merged == [SpeechSegment(0, 2000), SpeechSegment(5000, 6000)]
    # Would exceed the maximum: stays apart.
    kept = merge_close(segs[:2], merge_gap_ms=300, max_segment_ms=1500)
    assert kept == segs[:2]


def test_split_long_cuts_at_quiet_point_and_respects_max():
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(16_000 * 70) * 0.3).astype(np.float32)
    quiet_ms = 22_000
    samples[quiet_ms * 16 : (quiet_ms + 200) * 16] = 0.0
    pieces = split_long([SpeechSegment(0, 70_000)], samples, max_segment_ms=30_000)
    assert all(p.duration_ms <= 30_000 for p in pieces)
    assert pieces[0].start_ms == 0 and pieces[-1].end_ms == 70_000
    assert all(a.end_ms == b.start_ms for a, b in zip(pieces, pieces[1:]))
    assert quiet_ms <= pieces[0].end_ms <= quiet_ms + 200


def test_postprocess_drops_clicks_and_orders():
    samples = np.zeros(16_000 * 10, dtype=np.float32)
    out = postprocess_spans(
        [(5000, 6000), (100, 150), (1000, 3000)],
        samples,
        max_segment_s=30,
        merge_gap_ms=0,
        min_segment_ms=200,
        pad_ms=0,
    )
    assert out == [SpeechSegment(1000, 3000), SpeechSegment(5000, 6000)]


def test_slice_uses_milliseconds():
    samples = np.arange(16_000 * 2, dtype=np.float32)
    piece = SpeechSegment(500, 1000).slice(samples)
    assert len(piece) == 8000 and piece[0] == 8000


def test_pack_segments_fills_windows_without_crossing_them():
    segs = [
        SpeechSegment(0, 4000),
        SpeechSegment(9000, 14_000),  # 5 s pause before: packed anyway (gap included)
        SpeechSegment(20_000, 29_000),
        SpeechSegment(31_000, 40_000),  # joining would make 0..40 s > 30 s: new piece
        SpeechSegment(41_000, 80_000),  # already longer than the window: left alone
        SpeechSegment(81_000, 82_000),
    ]
    packed = pack_segments(list(reversed(segs)), max_piece_ms=30_000)
    assert packed == [
        SpeechSegment(0, 29_000),
        SpeechSegment(31_000, 40_000),
        SpeechSegment(41_000, 80_000),
        SpeechSegment(81_000, 82_000),
    ]
    # Every original segment lies inside exactly one piece.
    for seg in segs:
        assert sum(p.start_ms <= seg.start_ms and seg.end_ms <= p.end_ms for p in packed) == 1
    # The cuts of a long segment touch (gap 0): they must still not be re-joined past
    # the limit (the window is a hard limit for Whisper).
    cuts = [SpeechSegment(0, 20_000), SpeechSegment(20_000, 40_000), SpeechSegment(40_000, 45_000)]
    assert pack_segments(cuts, max_piece_ms=30_000) == [
        SpeechSegment(0, 20_000),
        SpeechSegment(20_000, 45_000),
    ]
    # 0 turns packing off (order still normalised).
    assert pack_segments(list(reversed(segs)), max_piece_ms=0) == segs


# --- pause-aware cuts of long spans ------------------------------------------------------

_RATE = 16_000


def _syllables(seconds: float, seed: int) -> np.ndarray:
    """Speech-like energy profile: noise bursts of 120-250 ms, each with a short dip, at
    0 dBFS-ish levels; no run of 200 ms is quiet."""
    rng = np.random.default_rng(seed)
    num_samples = int(seconds * _RATE)
    gain = np.empty(num_samples + _RATE, np.float32)
    pos = 0
    while pos < num_samples:
        burst = int(rng.uniform(0.12, 0.25) * _RATE)
        gain[pos : pos + burst] = rng.uniform(0.1, 0.3)
        gain[pos + burst : pos + burst + 640] = 0.01  # 40 ms stop closure: -20..-30 dB
        pos += burst + 640
    return (rng.standard_normal(num_samples) * gain[:num_samples]).astype(np.float32)


def _put(samples: np.ndarray, start_ms: int, end_ms: int, level: float, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    n = (end_ms - start_ms) * 16
    samples[start_ms * 16 : end_ms * 16] = (rng.standard_normal(n) * level).astype(np.float32)


def test_long_span_is_cut_in_a_pause_not_at_the_quietest_instant():
    # 40 s of continuous "speech" with one real pause (400 ms of room noise 30 dB down) at
    # 20 s and, nearer the 30 s limit, a 60 ms digital-silence dip inside a word: the
    # quietest 50 ms window is that dip, which is where the old cut went.
    samples = _syllables(40, seed=3)
    _put(samples, 20_000, 20_400, 0.005)
    _put(samples, 27_000, 27_060, 0.0)
    seg = [SpeechSegment(0, 40_000)]
    pieces = split_long(seg, samples, max_segment_ms=30_000)
    assert 20_000 <= pieces[0].end_ms <= 20_400, pieces
    old = split_long(seg, samples, max_segment_ms=30_000, pauses=PauseSettings(min_pause_ms=0))
    assert 27_000 <= old[0].end_ms <= 27_060, old  # the behaviour this replaces
    for got in (pieces, old):
        assert got[0].start_ms == 0 and got[-1].end_ms == 40_000
        assert all(a.end_ms == b.start_ms for a, b in zip(got, got[1:]))
        assert all(p.duration_ms <= 30_000 for p in got)


def test_packing_with_samples_fills_a_window_by_cutting_the_next_segment_at_a_pause():
    # Segments of 20 s and 15 s: whole, they make two windows (20 s and 15 s). The second
    # has a real pause at 6.0-6.4 s into it: cut there, its first part fills the first
    # window to 26.2 s and only 8.8 s go to the second.
    samples = _syllables(40, seed=5)
    samples[20_000 * 16 : 21_000 * 16] = 0.0  # the gap between the two segments
    _put(samples, 27_000, 27_400, 0.005)
    segs = [SpeechSegment(0, 20_000), SpeechSegment(21_000, 36_000)]
    whole = pack_pieces(segs, max_piece_ms=30_000)
    assert [p.segment for p in whole] == segs
    filled = pack_pieces(segs, max_piece_ms=30_000, samples=samples)
    assert len(filled) == 2
    first, second = filled
    cut = first.segment.end_ms
    assert 27_000 <= cut <= 27_400 and second.segment == SpeechSegment(cut, 36_000)
    assert first.segment.start_ms == 0 and first.segment.duration_ms <= 30_000
    # Members: the first window holds segment 1 and the cut's first part; nothing is lost.
    assert first.members == (segs[0], SpeechSegment(21_000, cut))
    assert second.members == (SpeechSegment(cut, 36_000),)
    # No pause within reach: whole segments as before (a cut inside a word costs words).
    plain = _syllables(40, seed=6)
    plain[20_000 * 16 : 21_000 * 16] = 0.0
    assert [p.segment for p in pack_pieces(segs, max_piece_ms=30_000, samples=plain)] == segs
    # Too little room left (2 s < 3 s): no cut either.
    tight = [SpeechSegment(0, 28_000), SpeechSegment(28_500, 36_000)]
    assert [p.segment for p in pack_pieces(tight, max_piece_ms=30_000, samples=samples)] == tight


def test_longest_pause_wins_and_levels_are_relative():
    samples = _syllables(45, seed=4)
    _put(samples, 17_000, 17_600, 0.003)  # 600 ms: a sentence end
    _put(samples, 26_000, 26_250, 0.003)  # 250 ms: a breath, nearer the limit
    seg = [SpeechSegment(0, 45_000)]
    loud = split_long(seg, samples, max_segment_ms=30_000)
    quiet = split_long(seg, samples * 0.01, max_segment_ms=30_000)  # a 40 dB quieter speaker
    assert 17_000 <= loud[0].end_ms <= 17_600, loud
    assert loud == quiet


def test_pause_in_the_first_half_beats_a_cut_inside_speech():
    samples = _syllables(35, seed=5)
    _put(samples, 9_000, 9_500, 0.002)  # the only pause, before half the limit
    pieces = split_long([SpeechSegment(0, 35_000)], samples, max_segment_ms=30_000)
    assert 9_000 <= pieces[0].end_ms <= 9_500, pieces
    assert all(p.duration_ms <= 30_000 for p in pieces)


def test_find_pauses_needs_depth_and_length():
    samples = _syllables(10, seed=6)
    _put(samples, 2_000, 2_300, 0.003, seed=2)  # deep and long: a pause
    _put(samples, 5_000, 5_150, 0.0, seed=2)  # deep, too short
    _put(samples, 7_000, 7_500, 0.06, seed=2)  # long, only ~8 dB down
    found = find_pauses_ms(samples, 0, 10_000, PauseSettings(min_pause_ms=200, depth_db=20))
    assert len(found) == 1 and abs(found[0][0] - 2_000) <= 10 and abs(found[0][1] - 2_300) <= 10
    assert find_pauses_ms(samples, 0, 10_000, PauseSettings(min_pause_ms=0)) == []


def test_postprocess_contract_holds_on_random_inputs():
    rng = np.random.default_rng(7)
    for trial in range(20):
        total_ms = int(rng.integers(5_000, 150_000))
        samples = _syllables(total_ms / 1000, seed=trial)
        for _ in range(int(rng.integers(0, 8))):
            a = int(rng.integers(0, total_ms - 1000))
            _put(samples, a, a + int(rng.integers(100, 1500)), 0.001, seed=trial)
        cuts = np.sort(rng.integers(0, total_ms, size=int(rng.integers(0, 12)) * 2))
        spans = [(int(a), int(b)) for a, b in zip(cuts[::2], cuts[1::2])]
        max_s = float(rng.choice([5.0, 10.0, 30.0]))
        out = postprocess_spans(
            spans, samples, max_segment_s=max_s, merge_gap_ms=300, min_segment_ms=200, pad_ms=100
        )
        assert all(s.duration_ms <= max_s * 1000 for s in out), (trial, out)
        assert all(a.end_ms <= b.start_ms for a, b in zip(out, out[1:])), (trial, out)
        assert all(0 <= s.start_ms < s.end_ms <= total_ms for s in out), (trial, out)
