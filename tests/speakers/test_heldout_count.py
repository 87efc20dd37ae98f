"""Speaker counts on voices nobody tuned on (issue 26), real GE2E weights.

The held-out probe: two male American espeak-ng variants at different speeds (en-us+m3 at
130 wpm, en-us+m7 at 190; GE2E centroids 0.21 apart) and a female British voice
(en-gb-x-rp+f4), 0.7 s pauses. The voices are in no set the clustering was tuned on
(``scripts.common.conversations.VOICE_SETS``). The average-linkage threshold found 2
speakers on these two seeds; the count must be 3, the DER far from chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scripts.common.conversations import VOICE_SETS, make_conversation, reference_annotation
from serve_app.core import diarization as dz
from tests.speech import requires_espeak


@requires_espeak
@pytest.mark.parametrize("seed", [500, 502])
def test_a_held_out_three_talker_conversation_gets_three_speakers(
    ge2e, tmp_path: Path, seed: int
) -> None:
    pytest.importorskip("pyannote.metrics")
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    conversation = make_conversation(
        3, seed, tmp_path, voices=VOICE_SETS["heldout"][:3], pause_s=(0.7, 0.7)
    )
    assert conversation.num_speakers == 3
    spans = [(t.start_s, t.end_s) for t in conversation.turns]  # oracle speech, no VAD
    result = dz.diarize(conversation.samples, spans, lambda w: np.asarray(ge2e.embed(w)))
    assert len(result.speakers) == 3
    hypothesis = Annotation()
    for turn in result.turns:
        hypothesis[Segment(turn.start_s, turn.end_s)] = turn.speaker
    der = DiarizationErrorRate(collar=0.5)(reference_annotation(conversation), hypothesis)
    assert der < 0.1  # one talker merged into another: ~0.2-0.4
