import numpy as np

from serve_app.segmentation import (
    SpeechSegment,
    merge_close,
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
