"""The real VADs through serve_app.vad.detectors.Vad: FSMN-VAD (torch and ONNX Runtime) and Silero.

Speech bounds, silence, thread count, and the behaviour issue 8 is about: sentences
joined with 1.2 s pauses (a pause every listener hears) come back split at every pause.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.config import VadSettings
from serve_app.core.segmentation import frame_energy_db
from tests.speech import SENTENCES, have_espeak, silence, synthesize

BACKENDS = {
    "fsmn-torch": VadSettings(cpu_threads=1),
    "fsmn-onnx": VadSettings(cpu_threads=1, fsmn_runtime="onnx"),
    "silero": VadSettings(cpu_threads=1, backend="silero"),
}


@pytest.fixture(scope="module")
def vads(models_dir):
    import torch

    from serve_app.vad.detectors import Vad

    before = torch.get_num_threads()
    loaded = {}
    threads = {}
    for name, settings in BACKENDS.items():
        loaded[name] = Vad(settings, models_dir=models_dir)
        threads[name] = torch.get_num_threads()
        torch.set_num_threads(before)  # leave the test process as it was
    return loaded, threads


def _sounding(samples: np.ndarray) -> np.ndarray:
    """The clip without espeak's leading and trailing quiet (10 ms frames 40 dB down)."""
    energy = frame_energy_db(samples, 0, len(samples) // 16)
    loud = np.flatnonzero(energy >= np.percentile(energy, 75) - 40)
    return samples[loud[0] * 160 : (loud[-1] + 1) * 160]


@pytest.fixture(scope="module")
def joined_sentences(tmp_path_factory):
    """Ten espeak sentences joined with 1.2 s pauses, and where each pause lies (ms)."""
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    tmp = tmp_path_factory.mktemp("tts")
    parts = [_sounding(synthesize(text, tmp)) for text in SENTENCES[:10]]
    pause = silence(1.2)
    audio = [silence(1.0)]
    pauses_ms = []
    pos = len(audio[0])
    for i, part in enumerate(parts):
        if i:
            pauses_ms.append((pos // 16, (pos + len(pause)) // 16))
            audio.append(pause)
            pos += len(pause)
        audio.append(part)
        pos += len(part)
    audio.append(silence(1.0))
    return np.concatenate(audio).astype(np.float32), pauses_ms


def test_fsmn_loader_uses_the_configured_threads(vads) -> None:
    # FunASR's loader sets torch's pool to ncpu (4 unless told): 1 thread as configured.
    _, threads = vads
    assert threads["fsmn-torch"] == 1
    assert threads["fsmn-onnx"] == 1


def test_fsmn_keeps_no_autograd_history_across_chunks(vads) -> None:
    """Each 60 s chunk's encoder output must not carry autograd history: the encoder's
    cache links chunk to chunk, so with history every chunk's activations lived until the
    call ended (RSS +80 MB per minute of audio; 5 GB for an hour-long upload)."""
    loaded, _ = vads
    vad = loaded["fsmn-torch"]
    encoder = vad._detector._auto.model.encoder
    seen: list[bool] = []
    hook = encoder.register_forward_hook(lambda _m, _in, out: seen.append(out.requires_grad))
    try:
        rng = np.random.default_rng(0)
        vad.speech_spans_ms((rng.standard_normal(16_000 * 130) * 0.05).astype(np.float32))
    finally:
        hook.remove()
    assert len(seen) >= 3 and not any(seen)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_speech_between_pauses_is_found_and_silence_is_empty(vads, backend, tmp_path) -> None:
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    model = vads[0][backend]
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


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_audible_pause_splits_the_speech(vads, backend, joined_sentences) -> None:
    # ~40 s, under FSMN's 60 s single-segment limit: before this was fixed, FunASR 1.4's
    # dynamic end-silence schedule (2 s for the first 60 s) gave one span, which the 30 s
    # cap then cut at one point. Every raw span boundary must now fall into a pause and
    # every pause hold one; no final segment may reach across a pause.
    model = vads[0][backend]
    audio, pauses_ms = joined_sentences
    spans = model.speech_spans_ms(audio)
    assert len(spans) == len(pauses_ms) + 1, spans
    for (_, end_ms), (start_ms, _), (p_start, p_end) in zip(spans, spans[1:], pauses_ms):
        # A boundary may reach 100 ms past the pause into a soft onset or decay (Silero
        # decides per 32 ms window): the segments' pad_ms (100) gives that back.
        assert p_start - 100 <= end_ms < start_ms <= p_end + 100, (end_ms, start_ms, p_start)
    segments = model.segments(audio)
    assert len(segments) == len(pauses_ms) + 1, segments
    for p_start, p_end in pauses_ms:
        middle = (p_start + p_end) // 2
        assert not any(s.start_ms < middle < s.end_ms for s in segments)


def test_onnx_fsmn_spans_match_torch(vads, joined_sentences) -> None:
    # Same FunASR frontend and span state machine; only the network runs in ONNX Runtime
    # instead of torch, so scores differ by float rounding. A frame's speech/silence
    # decision can flip only where a score sits on the threshold: allow 2 frames (20 ms)
    # per boundary, the same number of spans. Noise makes such near-threshold frames likely.
    torch_vad, onnx_vad = vads[0]["fsmn-torch"], vads[0]["fsmn-onnx"]
    audio, _ = joined_sentences
    rng = np.random.default_rng(0)
    noisy = (audio + rng.standard_normal(len(audio)) * 0.01).astype(np.float32)
    # Over 60 s: FunASR runs two 60 s chunks, so the FSMN caches cross a chunk edge.
    long = np.concatenate([noisy, audio, noisy[: 16_000 * 10]])
    for clip in (audio, noisy, long):
        expected = torch_vad.speech_spans_ms(clip)
        got = onnx_vad.speech_spans_ms(clip)
        assert len(got) == len(expected) and expected, (got, expected)
        for (a, b), (c, d) in zip(got, expected):
            assert abs(a - c) <= 20 and abs(b - d) <= 20, (got, expected)


def test_silero_matches_faster_whisper_own_vad(vads, joined_sentences) -> None:
    # The silero backend is faster-whisper's own implementation and model file: its spans
    # are exactly faster-whisper's get_speech_timestamps with the same options.
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    audio, _ = joined_sentences
    settings = BACKENDS["silero"]
    reference = get_speech_timestamps(
        audio,
        VadOptions(
            threshold=settings.silero_threshold,
            min_silence_duration_ms=settings.end_silence_ms,
            min_speech_duration_ms=0,
            speech_pad_ms=0,
        ),
    )
    got = vads[0]["silero"].speech_spans_ms(audio)
    assert got == [(r["start"] // 16, -(-r["end"] // 16)) for r in reference]
