"""Transcript fidelity on real models: FSMN-VAD + Whisper tiny.en (the plain classes of
the default config) against faster-whisper's own sequential transcribe of the same audio.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.speech import requires_espeak

SR = 16_000


@pytest.mark.slow
@requires_espeak
def test_long_recording_keeps_every_sentence_the_library_keeps(tmp_path, models_dir):
    """FSMN-VAD + Whisper tiny.en (the plain classes, default config) on ten espeak-ng
    sentences joined with 0.3 s pauses (two packed 30 s items): no sentence is lost that
    faster-whisper's own sequential transcribe keeps, and the WER stays within 0.05 of
    that reference. On the development machine the first item's decode stops after its
    first sentence here (without the re-decode 8 of 10 sentences are lost, WER 0.79); the
    assertion does not depend on that happening on another CPU."""
    from scripts import fidelity
    from tests.speech import SENTENCES, concat_with_pauses, synthesize

    texts = SENTENCES[:10]
    samples = concat_with_pauses([synthesize(t, tmp_path, voice="en-gb") for t in texts], 0.3)

    logic = fidelity.ServiceLogic(fidelity.DEFAULT_CONFIG, cpu_threads=0)
    from serve_app.recognizers.whisper_backend import resolve_compute_type, resolve_model_path

    s = logic.settings
    library = fidelity.LibraryReference(
        resolve_model_path(s.model, logic.models_dir),
        resolve_compute_type(s.precision, s.device),
        s.cpu_threads,
    )
    reference = library(samples, s.language)
    ours = logic.transcribe(samples, redecode_rounds=2)
    lost = set(fidelity.dropped_sentences(texts, ours))
    assert lost <= set(fidelity.dropped_sentences(texts, reference)), (ours, reference)
    from serve_app.core.evaluation import word_error_rate

    joined = " ".join(texts)
    assert word_error_rate([joined], [ours]) <= word_error_rate([joined], [reference]) + 0.05, (
        ours,
        reference,
    )


@pytest.mark.slow
@pytest.mark.parametrize("telephone", [False, True], ids=["16k-wav", "8k-gsm-wav"])
def test_recorded_speech_in_noise_keeps_its_sentences_and_their_times(models_dir, telephone):
    """Recorded English (pytest-audioeval's three samples) in white noise at 20 dB SNR, 12
    rounds of fox / counting / hello with 0.3-4 s pauses (134 s, 5 packed items), through
    FSMN-VAD + Whisper tiny.en (default config): no sentence lost that faster-whisper's own
    sequential transcribe keeps, and no segment whose text is a sentence spoken elsewhere
    (its time over none of that sentence's renditions). On the development machine (Intel,
    2026-12-07) tiny.en gives these items whole-second times and ends most of them before
    their last sentence; matching spans to VAD segments by count lost 2 sentences and put 3
    segments over the wrong speech (seeds 1 and 2 alike); the assertions do not depend on
    that happening on another CPU."""
    from scripts import fidelity
    from serve_app.core.audio import decode_audio

    cache = Path.home() / ".cache" / "ray-funasr-serve" / "test-data"
    try:
        clips = {u.name.split("-", 1)[1]: u.samples for u in fidelity.audioeval_utterances(cache)}
    except Exception as exc:
        pytest.skip(f"pytest-audioeval samples unavailable: {exc}")
    keys = {"quick_brown_fox": "fox", "counting": "5", "hello_world": "hello"}
    rng = np.random.default_rng(1)
    parts, truth, t = [], [], 0
    for _ in range(12):
        for name, pause in (
            ("quick_brown_fox", 0.6),
            ("counting", rng.uniform(0.3, 2.5)),
            ("hello_world", rng.uniform(0.5, 4)),
        ):
            clip = clips[name]
            parts += [clip, np.zeros(int(SR * pause), np.float32)]
            truth.append((keys[name], t / SR, (t + len(clip)) / SR))
            t += len(clip) + int(SR * pause)
    x = np.concatenate(parts)
    x = (x + rng.standard_normal(len(x)) * 0.1 * np.sqrt(np.mean(x**2))).astype(np.float32)
    x = np.clip(x / np.abs(x).max() * 0.9, -1, 1)
    upload = io.BytesIO()
    if telephone:  # a call-centre file: 8 kHz GSM 6.10 in WAV
        sf.write(upload, soxr.resample(x, SR, 8000), 8000, format="WAV", subtype="GSM610")
    else:
        sf.write(upload, x, SR, format="WAV", subtype="PCM_16")
    audio = decode_audio(upload.getvalue())  # as the ingress does
    x = audio.samples

    def misplaced(segments) -> list:
        return [
            (round(a, 1), round(b, 1), text)
            for a, b, text in segments
            for key in keys.values()
            if key in text.lower() and not any(k == key and s < b and e > a for k, s, e in truth)
        ]

    logic = fidelity.ServiceLogic(fidelity.DEFAULT_CONFIG, cpu_threads=0)
    ours = asyncio.run(logic.service(redecode_rounds=2).transcribe(audio, model=None))
    s = logic.settings
    from serve_app.recognizers.whisper_backend import resolve_compute_type, resolve_model_path

    library = fidelity.LibraryReference(
        resolve_model_path(s.model, logic.models_dir),
        resolve_compute_type(s.precision, s.device),
        s.cpu_threads,
    )
    ref_segments = library.segments(x, s.language)
    ref_text = " ".join(text for _, _, text in ref_segments).lower()
    for key in keys.values():
        said = sum(1 for k, _, _ in truth if k == key)
        kept_by_library = min(said, ref_text.count(key))
        assert ours.text.lower().count(key) >= kept_by_library, (key, ours.text, ref_text)
    ours_segments = [(seg.start_s, seg.end_s, seg.text) for seg in ours.segments]
    assert len(misplaced(ours_segments)) <= len(misplaced(ref_segments)), misplaced(ours_segments)
