"""The real FSMN-VAD through FsmnVad: speech bounds, silence, thread count."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.config import VadSettings
from tests.speech import SENTENCES, have_espeak, silence, synthesize


@pytest.fixture(scope="module")
def vad(models_dir):
    import torch

    from serve_app.vad import FsmnVad

    before = torch.get_num_threads()
    model = FsmnVad(VadSettings(cpu_threads=1), models_dir=models_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(before)  # leave the test process as it was
    return model, threads


def test_loader_uses_the_configured_threads(vad) -> None:
    # FunASR's loader sets torch's pool to ncpu (4 unless told): 1 thread as configured.
    _, threads = vad
    assert threads == 1


def test_speech_between_pauses_is_found_and_silence_is_empty(vad, tmp_path) -> None:
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    model, _ = vad
    first, second = (synthesize(text, tmp_path) for text in SENTENCES[:2])
    audio = np.concatenate([silence(2.0), first, silence(3.0), second, silence(2.0)])
    segments = model.segments(audio)
    assert len(segments) == 2, segments
    expected_ms = [
        (2000, 2000 + len(first) // 16),
        (5000 + len(first) // 16, 5000 + (len(first) + len(second)) // 16),
    ]
    for seg, (start_ms, end_ms) in zip(segments, expected_ms):
        # espeak's own leading/trailing quiet and the VAD's padding: within 0.5 s.
        assert abs(seg.start_ms - start_ms) < 500 and abs(seg.end_ms - end_ms) < 500, seg
    assert model.segments(silence(5.0)) == []
    assert model.segments(np.zeros(0, np.float32)) == []
