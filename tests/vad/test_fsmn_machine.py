"""serve_app.vad.fsmn_machine: our port of FSMN-VAD's span state machine against FunASR's own.

The port runs on FunASR's own features and scores (FunASR's ``inference`` still drives the
frontend and encoder), so on the same machine and audio the spans must be *identical* to
``AutoModel.generate`` of the same model folder, not merely close: any difference is a
bug in the port. The audio covers what the machine branches on: speech with pauses,
noise under speech, silence, noise alone, speech longer than FunASR's 60 s chunk and
longer than ``max_single_segment_time`` (60 s, a forced cut), a file of exactly one
chunk, and sub-window clips.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.config import VadSettings
from serve_app.vad.fsmn_machine import FsmnOptions, spans_ms
from tests.reference import funasr_vad_spans
from tests.speech import SENTENCES, have_espeak, silence, synthesize

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("fsmn")
    rng = np.random.default_rng(7)
    sentences = [synthesize(text, tmp) for text in SENTENCES[:8]]
    pauses = []
    for i, s in enumerate(sentences):
        pauses += [s, silence([0.3, 0.7, 1.5, 3.0][i % 4])]
    with_pauses = np.concatenate([silence(0.5), *pauses]).astype(np.float32)
    # ~75 s of speech with 0.15 s gaps: one segment FunASR must cut at 60 s.
    run = np.concatenate([p for s in sentences * 4 for p in (s, silence(0.15))])[: 16000 * 75]
    noisy = with_pauses + (rng.standard_normal(len(with_pauses)) * 0.02).astype(np.float32)
    return {
        "pauses": with_pauses,
        "noisy": noisy.astype(np.float32),
        "long_run": run.astype(np.float32),
        "two_chunks": np.concatenate([with_pauses, with_pauses, with_pauses])[: 16000 * 130],
        "exactly_one_chunk": np.resize(with_pauses, 16000 * 60).astype(np.float32),
        "silence": silence(4.0),
        "noise": (rng.standard_normal(16000 * 3) * 0.05).astype(np.float32),
        "short": sentences[0][:4800],
        "tiny": sentences[0][:1000],
    }


@pytest.fixture(scope="module")
def reference(models_dir):
    """FunASR's own FSMN-VAD on the same folder, one thread as ours."""
    return funasr_vad_spans(models_dir)


SETTINGS = {
    "default": VadSettings(fsmn_fbank="funasr", cpu_threads=1),
    "long-silence-low-thres": VadSettings(
        fsmn_fbank="funasr", cpu_threads=1, end_silence_ms=1200, fsmn_speech_noise_thres=0.2
    ),
    "short-silence-onnx": VadSettings(
        fsmn_fbank="funasr", cpu_threads=1, end_silence_ms=200, fsmn_runtime="onnx"
    ),
    # Espeak's clips end in quiet: only a long end silence joins them into one run.
    "long-end-silence": VadSettings(fsmn_fbank="funasr", cpu_threads=1, end_silence_ms=6000),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_spans_equal_funasr_on_the_same_audio(models_dir, clips, reference, name) -> None:
    import torch

    from serve_app.vad.detectors import FsmnSpans

    settings = SETTINGS[name]
    before = torch.get_num_threads()
    ours = FsmnSpans(settings, models_dir=models_dir)
    torch.set_num_threads(before)
    found_cut = False
    for clip, samples in clips.items():
        got = ours.speech_spans_ms(samples)
        want = reference(samples, settings)
        assert got == want, f"{clip}: {got} != FunASR {want}"
        found_cut |= clip == "long_run" and any(e - s >= 59_000 for s, e in got)
    # The clips did reach the branches they are here for.
    assert ours.speech_spans_ms(clips["pauses"]), "speech found"
    assert ours.speech_spans_ms(clips["silence"]) == []
    if name == "long-end-silence":
        assert found_cut, "the 75 s run was cut at max_single_segment_time"


def _options(**overrides) -> FsmnOptions:
    base = dict(
        frame_ms=10,
        frame_length_ms=25,
        sample_rate_hz=16000,
        window_frames=20,
        sil_to_speech_frames=15,
        speech_to_sil_frames=15,
        end_silence_thresh_ms=650,
        latency_frames=40,
        lookahead_end_frames=10,
        do_extend=True,
        max_single_segment_ms=60000.0,
        max_start_silence_ms=3000.0,
        multiple_utterances=True,
        speech_noise_thres=0.6,
        speech_2_noise_ratio=1.0,
        snr_thres=-100.0,
        decibel_thres=-100.0,
        noise_frames=100,
        sil_pdf_ids=(0,),
    )
    base.update(overrides)
    return FsmnOptions(**base)  # type: ignore[arg-type]


def test_open_segment_at_the_end_only_when_the_file_ended() -> None:
    # 1 s silence, then speech to the end: an open segment, returned only on a final frame
    # (FunASR returns nothing for a final chunk without frames).
    flags = [False] * 100 + [True] * 200
    final = spans_ms(flags, _options(), final=True)
    assert len(final) == 1 and final[0][1] == 3000
    # Start: 15 speech frames fill the window at frame 114; 40 frames of latency back.
    assert final[0][0] == (114 - 40) * 10
    assert spans_ms(flags, _options(), final=False) == []


def test_end_silence_closes_with_lookahead() -> None:
    flags = [True] * 100 + [False] * 200
    (start, end), *rest = spans_ms(flags, _options(), final=True)
    assert rest == [] and start == 0
    # The window drops to <= 15 speech frames at frame 105; 650 ms of silence frames later
    # the end is put back by 650/10 - 10 - 1 = 54 frames: inside the 100 ms lookahead.
    assert 1000 <= end <= 1200
