"""Live audio in: the streaming VAD equals faster-whisper's whole-file Silero run, G.711 and
PCM16 decode like the reference codecs, and turns land where the speech is."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from serve_app.core.errors import InvalidRequestError
from serve_app.core.turns import TurnDetector, TurnSettings
from serve_app.online.realtime.audio_in import LiveDecoder, LiveFormat, parse_format
from serve_app.vad.streaming import WINDOW_MS, WINDOW_SAMPLES, SileroStream
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, silence, synthesize


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    tmp = tmp_path_factory.mktemp("live_audio")
    parts = [synthesize(s, tmp) for s in SENTENCES[:3]]
    return np.concatenate([silence(0.7), concat_with_pauses(parts, 1.2), silence(1.0)])


def whole_file_probabilities(samples: np.ndarray) -> np.ndarray:
    """faster-whisper's own whole-file Silero run (its ``SileroVADModel``)."""
    from faster_whisper.vad import get_vad_model

    whole = len(samples) // WINDOW_SAMPLES * WINDOW_SAMPLES
    return np.asarray(get_vad_model()(np.asarray(samples[:whole], np.float32))).reshape(-1)


@requires_espeak
def test_streaming_probabilities_equal_the_whole_file_run_for_any_chunking(speech):
    whole = whole_file_probabilities(speech)
    rng = np.random.default_rng(0)
    stream, got, pos = SileroStream(), [], 0
    while pos < len(speech):
        size = int(rng.integers(1, 4000))  # chunks that never align with windows
        got.append(stream.push(speech[pos : pos + size]))
        pos += size
    streamed = np.concatenate(got)
    assert len(streamed) == len(whole)
    # Identical here; other CPUs' kernels may differ in the last bits between batch shapes,
    # far below what moves a decision at the 0.5 threshold.
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


@requires_espeak
def test_turns_on_real_speech_find_each_sentence(speech, tmp_path: Path):
    probs = SileroStream().push(speech)
    events = TurnDetector(TurnSettings(), window_ms=WINDOW_MS).push(list(probs))
    starts = [e.at_ms for e in events if e.kind == "started"]
    stops = [e.at_ms for e in events if e.kind == "stopped"]
    assert len(starts) == len(stops) == 3  # three sentences, 1.2 s pauses > 0.5 s
    assert abs(starts[0] - 700) <= 150  # the speech starts after 0.7 s of silence


def test_mulaw_and_alaw_decode_like_the_reference_codec():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    data = bytes(range(256))
    for encoding, reference in (("ulaw", audioop.ulaw2lin), ("alaw", audioop.alaw2lin)):
        fmt = LiveFormat(encoding, 16_000)  # 16 kHz: no resampling, exact values
        ours = LiveDecoder(fmt).decode(data)
        ref = np.frombuffer(reference(data, 2), dtype="<i2").astype(np.float32) / 32768.0
        np.testing.assert_array_equal(ours, ref)


def test_pcm16_24k_is_resampled_to_16k_and_odd_bytes_are_refused():
    decoder = LiveDecoder(parse_format({"type": "audio/pcm", "rate": 24000}, param="f"))
    tone = (np.sin(2 * np.pi * 440 * np.arange(24_000) / 24_000) * 8000).astype("<i2")
    out = np.concatenate(
        [decoder.decode(tone[i : i + 480].tobytes()) for i in range(0, 24_000, 480)]
    )
    # soxr HQ holds back its filter delay (about 21 ms here) until more audio comes.
    assert 16_000 - 400 <= len(out) <= 16_000
    # The tone survives: its frequency is still 440 Hz.
    spectrum = np.abs(np.fft.rfft(out[2000:14000]))
    assert abs(np.argmax(spectrum) * 16_000 / 12_000 - 440) < 3
    with pytest.raises(InvalidRequestError):
        decoder.decode(b"\x00\x01\x02")


def test_format_names_ga_and_beta():
    assert parse_format("pcm16", param="f") == LiveFormat("pcm16", 24_000)
    assert parse_format("g711_ulaw", param="f") == LiveFormat("ulaw", 8000)
    assert parse_format({"type": "audio/pcma"}, param="f") == LiveFormat("alaw", 8000)
    assert parse_format({"type": "audio/pcm", "rate": 16000}, param="f").rate_hz == 16000
    for bad in ("mp3", {"type": "audio/pcm", "rate": 44100}, {"type": "audio/opus"}, 3):
        with pytest.raises(InvalidRequestError):
            parse_format(bad, param="f")
