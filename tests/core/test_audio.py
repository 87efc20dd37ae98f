"""decode_audio: every supported format round-trips; every bad input gets its typed error.

Speech comes from espeak-ng (``tests/speech.py``); it is resampled to 44.1/48 kHz stereo
(right channel at half amplitude, so the expected mono mix is 0.75 x the speech), encoded
in memory with soundfile or PyAV, decoded, and compared with the original.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from serve_app.core.audio import (
    SAMPLE_RATE_HZ,
    AudioSettings,
    DecodedAudio,
    decode_audio,
    read_audio_bytes,
    sniff_container,
)
from serve_app.core.errors import (
    AsrError,
    AudioTooLongError,
    InvalidAudioError,
    InvalidRequestError,
    UnsupportedCodecError,
    UploadTooLargeError,
)
from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, silence, synthesize

RIGHT_GAIN = 0.5  # right channel = 0.5 x left; mono average = 0.75 x left
MONO_GAIN = (1.0 + RIGHT_GAIN) / 2


# -- encoders -----------------------------------------------------------------------------


def stereo_at(speech_16k: np.ndarray, rate_hz: int) -> np.ndarray:
    left = soxr.resample(speech_16k, SAMPLE_RATE_HZ, rate_hz).astype(np.float32)
    return np.stack([left, RIGHT_GAIN * left], axis=1)


def sf_bytes(samples: np.ndarray, rate_hz: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate_hz, format=fmt, subtype=subtype)
    return buf.getvalue()


def av_bytes(samples: np.ndarray, rate_hz: int, muxer: str, codec: str) -> bytes:
    """Encode (frames, 2) float32 with PyAV (ffmpeg) into an in-memory container."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=rate_hz, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.T), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate_hz
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def wav_bytes(
    payload: bytes,
    *,
    format_tag: int = 1,
    channels: int = 1,
    rate_hz: int = 16_000,
    bits: int = 16,
    declared_data_bytes: int | None = None,
) -> bytes:
    """A hand-built WAV, so headers can lie."""
    block_align = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH", format_tag, channels, rate_hz, rate_hz * block_align, block_align, bits
    )
    declared = len(payload) if declared_data_bytes is None else declared_data_bytes
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", declared)
        + payload
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(seconds: float, rate_hz: int = SAMPLE_RATE_HZ, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# -- comparison ---------------------------------------------------------------------------


def best_lag_correlation(ref: np.ndarray, got: np.ndarray, max_lag: int = 1600) -> float:
    """Peak normalised cross-correlation within +-max_lag samples (codec delay)."""
    n = min(len(ref), len(got))
    a, b = ref[:n].astype(np.float64), got[:n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    xcorr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate([xcorr[: max_lag + 1], xcorr[-max_lag:]])
    return float(lags.max() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@pytest.fixture(scope="module")
def speech_16k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Two sentences with a pause: ~5 s of real speech."""
    tmp = tmp_path_factory.mktemp("speech")
    parts = [synthesize(text, tmp) for text in SENTENCES[:2]]
    return concat_with_pauses(parts, pause_s=0.4)


ADPCM_BLOCK_S = 0.1  # IMA ADPCM pads the last block (~2041 frames at 22.05 kHz stereo)

# (id, source rate, encoder, expected source_format, min correlation, duration tolerance)
ROUND_TRIPS = [
    ("wav-pcm16", 44100, lambda x, r: sf_bytes(x, r, "WAV", "PCM_16"), "wav/pcm_16", 0.999, 0.05),
    ("wav-pcm24", 48000, lambda x, r: sf_bytes(x, r, "WAV", "PCM_24"), "wav/pcm_24", 0.999, 0.05),
    ("wav-pcm32", 44100, lambda x, r: sf_bytes(x, r, "WAV", "PCM_32"), "wav/pcm_32", 0.999, 0.05),
    ("wav-float", 48000, lambda x, r: sf_bytes(x, r, "WAV", "FLOAT"), "wav/float", 0.999, 0.05),
    ("wav-ulaw", 8000, lambda x, r: sf_bytes(x, r, "WAV", "ULAW"), "wav/ulaw", 0.99, 0.05),
    (
        "wav-ima-adpcm",
        22050,
        lambda x, r: sf_bytes(x, r, "WAV", "IMA_ADPCM"),
        "wav/ima_adpcm",
        0.99,
        ADPCM_BLOCK_S,
    ),
    ("flac", 48000, lambda x, r: sf_bytes(x, r, "FLAC", "PCM_16"), "flac/pcm_16", 0.999, 0.05),
    ("aiff", 44100, lambda x, r: sf_bytes(x, r, "AIFF", "PCM_16"), "aiff/pcm_16", 0.999, 0.05),
    ("ogg-vorbis", 44100, lambda x, r: sf_bytes(x, r, "OGG", "VORBIS"), "ogg/vorbis", 0.98, 0.05),
    ("ogg-opus", 48000, lambda x, r: sf_bytes(x, r, "OGG", "OPUS"), "ogg/opus", 0.98, 0.05),
    ("mp3", 44100, lambda x, r: av_bytes(x, r, "mp3", "libmp3lame"), "mp3/mp3", 0.98, 0.05),
    ("m4a-aac", 44100, lambda x, r: av_bytes(x, r, "ipod", "aac"), "mp4/aac", 0.95, 0.05),
    ("aac-adts", 48000, lambda x, r: av_bytes(x, r, "adts", "aac"), "aac/aac", 0.95, 0.05),
    (
        "webm-opus",
        48000,
        lambda x, r: av_bytes(x, r, "webm", "libopus"),
        "matroska/opus",
        0.98,
        0.05,
    ),
]


@requires_espeak
@pytest.mark.parametrize(
    ("rate_hz", "encode", "source_format", "min_corr", "duration_tolerance_s"),
    [case[1:] for case in ROUND_TRIPS],
    ids=[case[0] for case in ROUND_TRIPS],
)
def test_round_trip(
    speech_16k, rate_hz, encode, source_format, min_corr, duration_tolerance_s
) -> None:
    original = stereo_at(speech_16k, rate_hz)
    decoded = decode_audio(encode(original, rate_hz))

    assert isinstance(decoded, DecodedAudio)
    assert decoded.source_sample_rate_hz == rate_hz
    assert decoded.source_format == source_format
    samples = decoded.samples
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.flags["C_CONTIGUOUS"]
    # Duration within 50 ms. AAC keeps its 1024-sample priming and last-frame padding
    # (+27..35 ms here): PyAV-written M4A/ADTS carry no edit list that would trim them.
    assert abs(decoded.duration_s - len(speech_16k) / SAMPLE_RATE_HZ) < duration_tolerance_s
    # Same waveform (up to codec delay), same level: averaged channels, nothing normalised.
    expected = MONO_GAIN * speech_16k
    if rate_hz < SAMPLE_RATE_HZ:  # compare with what survives the lower rate
        expected = soxr.resample(
            soxr.resample(expected, SAMPLE_RATE_HZ, rate_hz), rate_hz, SAMPLE_RATE_HZ
        )
    correlation = best_lag_correlation(expected, samples)
    assert correlation > min_corr
    rms_ratio = np.sqrt(np.mean(samples**2)) / np.sqrt(np.mean(expected**2))
    assert 0.85 < rms_ratio < 1.15


@requires_espeak
def test_gsm_wav_decodes_whole(speech_16k) -> None:
    """GSM 6.10 in WAV (telephony recordings): libsndfile opens it as not seekable, which
    its ``blocks()`` reader refuses (a ValueError, answered 500 before)."""
    at_8k = soxr.resample(speech_16k, SAMPLE_RATE_HZ, 8000)
    decoded = decode_audio(sf_bytes(at_8k, 8000, "WAV", "GSM610"))
    assert decoded.source_format == "wav/gsm610" and decoded.source_sample_rate_hz == 8000
    assert abs(decoded.duration_s - len(speech_16k) / SAMPLE_RATE_HZ) < 0.05
    expected = soxr.resample(at_8k, 8000, SAMPLE_RATE_HZ)
    assert best_lag_correlation(expected, decoded.samples) > 0.5  # a vocoder, not PCM


def _amr_nb_with_dtx(samples_8k: np.ndarray) -> bytes:
    """AMR-NB (.amr) as phones record it: discontinuous transmission, so the pauses are
    comfort-noise (SID) and no-data frames."""
    buf = io.BytesIO()
    out = av.open(buf, "w", format="amr")
    stream = out.add_stream("libopencore_amrnb", rate=8000, options={"dtx": "1"})
    stream.layout, stream.bit_rate = "mono", 4750
    pcm = (np.clip(samples_8k, -1, 1) * 32767).astype(np.int16)
    for start in range(0, len(pcm) - 159, 160):
        frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 160], layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return buf.getvalue()


@requires_espeak
@pytest.mark.skipif(
    "libopencore_amrnb" not in av.codecs_available, reason="PyAV without opencore-amr"
)
def test_amr_nb_with_comfort_noise_frames_decodes_whole(speech_16k) -> None:
    """ffmpeg's own AMR-NB decoder stops at the first SID frame ("Not yet implemented in
    FFmpeg"): a phone recording with a pause was a 400 (corrupt or truncated)."""
    at_8k = soxr.resample(speech_16k, SAMPLE_RATE_HZ, 8000)
    with_pause = np.concatenate([at_8k, np.zeros(8000, np.float32), at_8k])
    decoded = decode_audio(_amr_nb_with_dtx(with_pause))
    assert decoded.source_format.startswith("amr")
    assert abs(decoded.duration_s - len(with_pause) / 8000) < 0.05
    second = decoded.samples[-len(speech_16k) :]
    assert best_lag_correlation(speech_16k, second) > 0.5  # a vocoder, not PCM


def test_wav_16k_mono_is_bit_exact_and_not_resampled() -> None:
    pcm = (tone(1.0) * 32767).astype("<i2")
    decoded = decode_audio(wav_bytes(pcm.tobytes()))
    assert decoded.source_format == "wav/pcm_16"
    np.testing.assert_array_equal(decoded.samples, pcm.astype(np.float32) / 32768)


def test_channels_are_averaged_and_amplitude_kept() -> None:
    left = 1.5 * tone(0.5)  # float WAV may exceed 1.0: must not be clipped or normalised
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    decoded = decode_audio(sf_bytes(stereo, SAMPLE_RATE_HZ, "WAV", "FLOAT"))
    np.testing.assert_allclose(decoded.samples, left / 2, atol=1e-7)
    assert decoded.samples.max() > 0.22  # 1.5 * 0.3 / 2


def test_resampling_keeps_a_tone_in_band() -> None:
    rate = 44100
    decoded = decode_audio(sf_bytes(tone(2.0, rate, hz=1000.0), rate, "WAV", "FLOAT"))
    spectrum = np.abs(np.fft.rfft(decoded.samples))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE_HZ / len(decoded.samples)
    assert abs(peak_hz - 1000.0) < 2.0
    assert abs(decoded.duration_s - 2.0) < 0.001


# -- bad input ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    """Valid files of a 3 s stereo tone, one per container, for the truncation tests."""
    x = np.stack([tone(3.0, 44100), tone(3.0, 44100, hz=660.0)], axis=1)
    y = np.stack([tone(3.0, 48000), tone(3.0, 48000, hz=660.0)], axis=1)
    return {
        "wav": sf_bytes(x, 44100, "WAV", "PCM_16"),
        "flac": sf_bytes(y, 48000, "FLAC", "PCM_16"),
        "ogg": sf_bytes(x, 44100, "OGG", "VORBIS"),
        "opus": sf_bytes(y, 48000, "OGG", "OPUS"),
        "mp3": av_bytes(x, 44100, "mp3", "libmp3lame"),
        "m4a": av_bytes(x, 44100, "ipod", "aac"),
        "webm": av_bytes(y, 48000, "webm", "libopus"),
    }


def test_valid_fixtures_decode(encoded) -> None:
    for name, data in encoded.items():
        assert abs(decode_audio(data).duration_s - 3.0) < 0.05, name


def test_empty_body() -> None:
    with pytest.raises(InvalidAudioError, match="empty"):
        decode_audio(b"")


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).bytes(50_000),
        b"hello, this is definitely not audio\n" * 100,
        b'{"audio": "base64?"}',
        b"<!DOCTYPE html><html><body>404</body></html>",
        b"RIFF",
        b"\x00" * 1000,
    ],
    ids=["random", "text", "json", "html", "riff-stub", "zeros"],
)
def test_not_audio(data: bytes) -> None:
    with pytest.raises(InvalidAudioError):
        decode_audio(data)


@pytest.mark.parametrize("name", ["wav", "flac", "ogg", "opus", "mp3", "m4a", "webm"])
def test_cut_in_half(encoded, name: str) -> None:
    data = encoded[name]
    with pytest.raises(InvalidAudioError, match=r"truncated|corrupt|cannot open"):
        decode_audio(data[: len(data) // 2])


def test_truncated_wav_message(encoded) -> None:
    data = encoded["wav"]
    with pytest.raises(InvalidAudioError, match=r"truncated: header declares \d+ bytes of data"):
        decode_audio(data[: len(data) // 2])


def test_wav_header_declares_more_data_than_present() -> None:
    payload = bytes(3200)
    with pytest.raises(InvalidAudioError, match="header declares 32000 bytes of data, 3200"):
        decode_audio(wav_bytes(payload, declared_data_bytes=32000))
    # The "unknown length" placeholder of streaming writers is a lie too.
    with pytest.raises(InvalidAudioError, match="truncated"):
        decode_audio(wav_bytes(payload, declared_data_bytes=0xFFFFFFFF))


def test_wav_header_understates_data_absurdly() -> None:
    pcm = (tone(2.0) * 32767).astype("<i2").tobytes()
    with pytest.raises(InvalidAudioError, match="understates"):
        decode_audio(wav_bytes(pcm, declared_data_bytes=100))


def test_wav_with_trailing_metadata_chunk_is_fine() -> None:
    pcm = (tone(1.0) * 32767).astype("<i2").tobytes()
    info = b"INFOISFT" + struct.pack("<I", 6) + b"test\x00\x00"
    data = wav_bytes(pcm) + b"LIST" + struct.pack("<I", len(info)) + info
    assert abs(decode_audio(data).duration_s - 1.0) < 1e-6


def test_wav_partial_frame_is_corrupt() -> None:
    pcm = (tone(0.5) * 32767).astype("<i2").tobytes()
    stereo_header_mono_payload = wav_bytes(pcm + b"\x00", channels=2)
    with pytest.raises(InvalidAudioError, match="not whole"):
        decode_audio(stereo_header_mono_payload)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_wav_with_nan_or_inf(bad: float) -> None:
    samples = tone(1.0)
    samples[1234] = bad
    with pytest.raises(InvalidAudioError, match="NaN or Inf"):
        decode_audio(sf_bytes(samples, SAMPLE_RATE_HZ, "WAV", "FLOAT"))


def test_float_wav_with_absurd_amplitude() -> None:
    # Finite but huge (a damaged float WAV, found by the fuzzer): the channel average and
    # the resampler overflowed to Inf. Moderately over full scale stays as decoded.
    samples = np.stack([tone(1.0, 44100)] * 2, axis=1)
    samples[1234, 0] = 3e38
    with pytest.raises(InvalidAudioError, match="peak amplitude 3e\\+38"):
        decode_audio(sf_bytes(samples, 44100, "WAV", "FLOAT"))
    loud = 5.0 * tone(0.5)
    decoded = decode_audio(sf_bytes(loud, SAMPLE_RATE_HZ, "WAV", "FLOAT"))
    np.testing.assert_array_equal(decoded.samples, loud)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_less_than_one_output_sample(fmt: str) -> None:
    # One frame at 48 kHz is a third of a 16 kHz sample: soxr returns nothing (fuzzer).
    with pytest.raises(InvalidAudioError, match="shorter than one sample"):
        decode_audio(sf_bytes(np.full((1, 2), 0.1, np.float32), 48000, fmt, "PCM_16"))
    assert (
        len(decode_audio(sf_bytes(np.full((6, 2), 0.1, np.float32), 48000, fmt, "PCM_16")).samples)
        >= 1
    )


def test_zero_length_audio() -> None:
    with pytest.raises(InvalidAudioError, match="no samples"):
        decode_audio(wav_bytes(b""))
    with pytest.raises(InvalidAudioError, match="no samples"):
        decode_audio(sf_bytes(np.zeros((0, 2), np.float32), 44100, "WAV", "PCM_16"))


def test_unsupported_codec() -> None:
    # A well-formed WAV carrying Dolby AC-2 (WAVE_FORMAT_DOLBY_AC2 = 0x0030): libsndfile
    # cannot open it, ffmpeg parses the container but has no AC-2 decoder.
    data = wav_bytes(bytes(4096), format_tag=0x0030, channels=2, rate_hz=48000, bits=16)
    with pytest.raises(UnsupportedCodecError, match="0x0030"):
        decode_audio(data)


def test_container_without_audio_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(InvalidAudioError, match="no audio stream"):
        decode_audio(buf.getvalue())


# -- limits -------------------------------------------------------------------------------


def test_upload_size_is_checked_before_decoding() -> None:
    limits = AudioSettings(max_upload_bytes=1000)
    with pytest.raises(UploadTooLargeError, match="1001 bytes"):
        decode_audio(b"not audio at all" * 62 + b"!" * 9, limits)  # 1001 bytes of junk
    decode_audio(wav_bytes(bytes(200)), limits)  # at the limit side: fine


@pytest.mark.parametrize("name", ["wav", "flac", "ogg", "opus", "mp3", "m4a", "webm"])
def test_duration_limit_from_header_before_decoding(encoded, name: str) -> None:
    with pytest.raises(AudioTooLongError, match=r"declares 3\.0 s"):
        decode_audio(encoded[name], AudioSettings(max_duration_s=2.0))
    assert decode_audio(encoded[name], AudioSettings(max_duration_s=3.5)).duration_s > 2.9


def mp3_without_xing_tag(samples: np.ndarray, rate_hz: int) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3", options={"write_xing": "0"}) as out:
        stream = out.add_stream("libmp3lame", rate=rate_hz, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.T), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate_hz
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["aac-adts", "mp3-without-xing"])
def test_duration_limit_while_decoding_headerless_stream(kind: str) -> None:
    # No header duration (ffmpeg's bitrate estimate is not trusted): decoding must stop.
    x = np.stack([tone(3.0, 48000)] * 2, axis=1)
    data = (
        av_bytes(x, 48000, "adts", "aac") if kind == "aac-adts" else mp3_without_xing_tag(x, 48000)
    )
    with pytest.raises(AudioTooLongError, match="longer than the 1 s limit"):
        decode_audio(data, AudioSettings(max_duration_s=1.0))
    assert abs(decode_audio(data).duration_s - 3.0) < 0.05


# -- sniffing and reading -----------------------------------------------------------------


def test_sniff(encoded) -> None:
    expected = {
        "wav": "wav",
        "flac": "flac",
        "ogg": "ogg",
        "opus": "ogg",
        "mp3": "mp3",
        "m4a": "mp4",
        "webm": "matroska",
    }
    assert {name: sniff_container(data) for name, data in encoded.items()} == expected
    assert sniff_container(b"plain text") is None


def test_read_audio_bytes(tmp_path: Path) -> None:
    data = wav_bytes(bytes(320))
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    assert read_audio_bytes(str(path)) == data
    assert read_audio_bytes(path.as_uri()) == data  # file:// through pyarrow.fs
    with pytest.raises(UploadTooLargeError):
        read_audio_bytes(path.as_uri(), max_bytes=100)
    with pytest.raises(UploadTooLargeError):
        read_audio_bytes(str(path), max_bytes=100)
    with pytest.raises(InvalidRequestError):
        read_audio_bytes(str(tmp_path / "missing.wav"))
    with pytest.raises(InvalidRequestError):
        read_audio_bytes((tmp_path / "missing.wav").as_uri())


def test_silence_decodes_to_zeros() -> None:
    pcm = (silence(0.5) * 32767).astype("<i2")
    decoded = decode_audio(wav_bytes(pcm.tobytes()))
    assert decoded.duration_s == 0.5 and not decoded.samples.any()


def test_faststart_m4a_cut_short(tmp_path: Path) -> None:
    # moov before mdat: ffmpeg opens the cut file and fails on the missing packets.
    path = tmp_path / "faststart.m4a"
    x = np.stack([tone(3.0, 44100)] * 2, axis=1)
    with av.open(str(path), "w", format="ipod", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("aac", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x.T), format="fltp", layout="stereo"
        )
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data[:100]
    assert abs(decode_audio(data).duration_s - 3.0) < 0.05
    with pytest.raises(InvalidAudioError, match="corrupt or truncated"):
        decode_audio(data[: int(len(data) * 0.9)])


@pytest.mark.parametrize("name", ["wav", "flac", "ogg", "opus", "mp3", "m4a", "webm"])
def test_mangled_files_only_raise_typed_errors(encoded, name: str) -> None:
    # Seeded fuzz: cut at random points, flip random bytes, smash the header. Each result
    # must be audio or an AsrError (found: PyAV raising UnicodeDecodeError on bad tags).
    rng = np.random.default_rng(sum(map(ord, name)))
    data = encoded[name]
    for attempt in range(60):
        mangled = bytearray(data)
        if attempt % 3 == 0:
            mangled = mangled[: int(rng.integers(1, len(mangled)))]
        elif attempt % 3 == 1:
            for _ in range(int(rng.integers(1, 20))):
                mangled[int(rng.integers(0, len(mangled)))] = int(rng.integers(0, 256))
        else:
            at = int(rng.integers(0, 200))
            mangled[at : at + 4] = rng.bytes(4)
        try:
            decoded = decode_audio(bytes(mangled))
        except AsrError:
            continue
        assert decoded.samples.dtype == np.float32 and np.isfinite(decoded.samples).all()
