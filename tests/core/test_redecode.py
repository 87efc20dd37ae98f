"""Splicing re-decoded stretches back into their item (serve_app.core.redecode.splice):
order, times, and what counts as a repeat."""

from __future__ import annotations

from serve_app.core.coverage import COMPRESSION, GAP, TAIL, ItemCheck, Stretch
from serve_app.core.redecode import splice
from serve_app.core.types import SegmentTranscript, TextSpan


def test_splice_drops_a_stretch_that_repeats_what_came_before():
    said = "the doctor asked him to drink more water"
    item = SegmentTranscript(text=said, spans=(TextSpan(0.0, 4.0, said),))
    check = ItemCheck(spans=item.spans, stretches=(Stretch(3000, 7000, TAIL),))
    for again in (said, "the doctor asked them to drink more water"):
        part = SegmentTranscript(text=again, spans=(TextSpan(0.0, 3.5, again),))
        out = splice(item, check, [part])
        assert out.text == said and len(out.spans) == 1, again
    new = "fresh vegetables are delivered to the market every day"
    part = SegmentTranscript(text=new, spans=(TextSpan(0.5, 3.5, new),))
    out = splice(item, check, [part])
    assert out.text == f"{said} {new}"
    # The stretch starts at 3.5 s, inside the item's span (0-4 s): that span now ends there.
    assert [(s.start_s, s.end_s) for s in out.spans] == [(0.0, 3.5), (3.5, 6.5)]


def test_splice_keeps_a_sentence_said_again_in_new_speech():
    """A caller counting or a hold message said again, at its own time: nothing repeats
    what was decoded (the item's times are fine, or the item was dropped and every
    stretch is decoded from its own audio). The old splice kept one of four countings."""
    said = "one two three four five six seven eight nine ten"
    stretches = tuple(Stretch(8000 * k, 8000 * k + 3300, COMPRESSION) for k in range(4))
    dropped = ItemCheck(spans=(), stretches=stretches, replace=True, degenerate=COMPRESSION)
    item = SegmentTranscript(text=" ".join([said] * 4))
    parts = [SegmentTranscript(text=said, spans=(TextSpan(0.4, 3.0, said),))] * 4
    out = splice(item, dropped, parts)
    assert out.text == " ".join([said] * 4)
    assert [s.start_s for s in out.spans] == [0.4, 8.4, 16.4, 24.4]
    # Fine times: the item's sentence ends at 3 s, the tail stretch starts at 7.8 s.
    item = SegmentTranscript(text=said, spans=(TextSpan(0.4, 3.0, said),))
    tail = ItemCheck(spans=item.spans, stretches=(Stretch(7800, 11300, TAIL),))
    assert splice(item, tail, parts[:1]).text == f"{said} {said}"


def test_splice_orders_shifts_and_drops_a_repeated_edge_word():
    item = SegmentTranscript(
        text="one two three four", spans=(TextSpan(0.0, 2.0, "one two"), TextSpan(5.0, 6.0, "six"))
    )
    check = ItemCheck(spans=item.spans, stretches=(Stretch(1900, 4800, GAP),))
    part = SegmentTranscript(text="two three four", spans=(TextSpan(0.1, 2.5, "two three four"),))
    out = splice(item, check, [part])
    assert [(s.start_s, s.text) for s in out.spans] == [
        (0.0, "one two"),
        (2.0, "three four"),
        (5.0, "six"),
    ]
    assert out.text == "one two three four six"


def test_splice_keeps_a_word_said_again_after_a_pause():
    """ "Okay." ... "Okay, thanks.": the second, decoded again as a gap 2 s later, is not
    the first one's edge word (the old splice dropped it)."""
    item = SegmentTranscript(text="okay", spans=(TextSpan(0.2, 0.8, "Okay."),))
    check = ItemCheck(spans=item.spans, stretches=(Stretch(2600, 4000, GAP),))
    part = SegmentTranscript(text="Okay, thanks.", spans=(TextSpan(0.2, 1.2, "Okay, thanks."),))
    assert splice(item, check, [part]).text == "Okay. Okay, thanks."
    # Two gaps' stretches are disjoint audio as well.
    two = ItemCheck(spans=(), stretches=(Stretch(0, 1000, GAP), Stretch(2600, 4000, GAP)))
    okay = SegmentTranscript(text="Okay.", spans=(TextSpan(0.2, 0.8, "Okay."),))
    assert splice(SegmentTranscript(text=""), two, [okay, part]).text == "Okay. Okay, thanks."
