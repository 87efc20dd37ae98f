"""Audio bytes -> 16 kHz mono float32, decoded once, with limits and typed errors.

Routing is by the file's magic bytes, never by a client-supplied name:

- WAV, FLAC, AIFF, AU, CAF: libsndfile (``soundfile``), the fast path (exact frame counts
  from the header, cheapest decode). WAV headers are checked here first, because
  libsndfile silently accepts a data chunk that declares more bytes than the file holds.
  A WAV codec libsndfile cannot open falls through to PyAV.
- Ogg (Vorbis, Opus, FLAC, Speex), MP3, AAC (ADTS), MP4/M4A, WebM/Matroska, AMR, ASF/WMA:
  PyAV (the ffmpeg bundled with faster-whisper), the demuxer forced so ffmpeg never
  guesses. libsndfile reads Ogg too, but measured 1.4x (Vorbis) to 3x (Opus) slower.

Every decoder streams blocks into one sink that averages channels, checks for NaN/Inf,
enforces the duration limit as it goes (so a long file stops decoding early instead of
filling memory) and resamples with soxr (``HQ``, streaming). soxr is a band-limited
resampler with a proper anti-alias filter for any rate ratio (44.1 kHz -> 16 kHz is
160/441), faster than ``scipy.signal.resample_poly`` at that ratio, identical for both
decoders, and already installed (librosa, a FunASR dependency, requires it). Amplitudes are
kept as decoded: nothing is normalised or clipped.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.config import AudioSettings
from serve_app.core.errors import (
    AudioTooLongError,
    InvalidAudioError,
    InvalidRequestError,
    UnsupportedCodecError,
    UploadTooLargeError,
)

SAMPLE_RATE_HZ = 16_000


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE_HZ, contiguous
    source_sample_rate_hz: int
    source_format: str  # "<container>/<codec>", e.g. "wav/pcm_16", "ogg/opus", "mp3/mp3"
    # decode_audio(keep_channels=True): each source channel on its own (16 kHz float32,
    # as long as ``samples``, which is still their average); () otherwise.
    channels: tuple[np.ndarray, ...] = ()

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ

    @property
    def num_channels(self) -> int:
        """Channels kept by the decode (1 when they were not kept)."""
        return max(1, len(self.channels))


SOUNDFILE_CONTAINERS = frozenset({"wav", "flac", "aiff", "au", "caf"})
# Our container name -> the ffmpeg demuxer that PyAV is told to use.
PYAV_DEMUXERS = {
    "wav": "wav",
    "flac": "flac",
    "ogg": "ogg",
    "aiff": "aiff",
    "au": "au",
    "caf": "caf",
    "mp3": "mp3",
    "aac": "aac",
    "mp4": "mp4",
    "matroska": "matroska",
    "amr": "amr",
    "asf": "asf",
}
# Containers whose stream duration ffmpeg takes from a header (or, for Ogg, the last page).
TRUSTED_DURATION_CONTAINERS = frozenset({"wav", "flac", "ogg", "aiff", "au", "caf", "mp4", "asf"})
SUPPORTED = "wav, flac, ogg (vorbis/opus), mp3, m4a/mp4 (aac), webm/mkv, aac, aiff, au, caf, amr"

MIN_SAMPLE_RATE_HZ = 1_000
MAX_SAMPLE_RATE_HZ = 768_000
BLOCK_FRAMES = 1 << 16
# Non-chunk bytes tolerated after a WAV data chunk (some writers leave padding or junk);
# more than this means the header understates the data length.
MAX_WAV_TRAILING_JUNK_BYTES = 4096
# Float samples may exceed full scale (1.0) a little; beyond this (60 dB over) they are
# garbage, not audio. Integer PCM never exceeds 1.0.
MAX_ABS_AMPLITUDE = 1000.0
# A container-declared duration this much longer than what decodes means a truncated file.
TRUNCATION_TOLERANCE_S = 0.25

_WAV_PCM = 0x0001
_WAV_FLOAT = 0x0003
_WAV_EXTENSIBLE = 0xFFFE


_DEFAULT_LIMITS = AudioSettings()


def decode_audio(
    data: bytes, limits: AudioSettings = _DEFAULT_LIMITS, *, keep_channels: bool = False
) -> DecodedAudio:
    """Decode any supported audio file to 16 kHz mono float32, once.

    With ``keep_channels`` the same single decode also keeps every source channel,
    resampled on its own (``DecodedAudio.channels``, e.g. agent and customer of a call);
    the mono mix is then their average after resampling (the resampler is linear, so it
    equals the default path's up to float rounding). The default path is unchanged.

    Raises:
        UploadTooLargeError: ``len(data) > limits.max_upload_bytes`` (checked first).
        AudioTooLongError: the header declares, or decoding reaches, more than
            ``limits.max_duration_s``.
        UnsupportedCodecError: the container is recognised but its codec is not decodable.
        InvalidAudioError: empty, not audio, truncated, lying header, NaN/Inf samples,
            or no samples at all.
    """
    if len(data) > limits.max_upload_bytes:
        raise UploadTooLargeError(
            f"upload of {len(data)} bytes exceeds the {limits.max_upload_bytes}-byte limit"
        )
    if len(data) == 0:
        raise InvalidAudioError("empty body: no audio data")
    container = sniff_container(data)
    if container is None:
        raise InvalidAudioError(
            f"not a recognised audio format (starts with {bytes(data[:12])!r}); "
            f"supported: {SUPPORTED}"
        )

    wav = _parse_wav_header(data) if container == "wav" else None
    if container == "ogg":
        _check_ogg_complete(data)

    source = _open_soundfile(data) if container in SOUNDFILE_CONTAINERS else None
    if source is None:
        source = _open_pyav(data, container, wav)
    try:
        if source.declared_s is not None and source.declared_s > limits.max_duration_s:
            raise AudioTooLongError(
                f"audio declares {source.declared_s:.1f} s, over the "
                f"{limits.max_duration_s:.0f} s limit"
            )
        if keep_channels:
            channels, decoded_s = _to_channels_16k(source.blocks, source.sample_rate_hz, limits)
            samples = channels[0] if len(channels) == 1 else _average_rows(channels)
        else:
            samples, decoded_s = _to_mono_16k(source.blocks, source.sample_rate_hz, limits)
            channels = []
    finally:
        source.close()
    if (
        source.check_truncation
        and source.declared_s is not None
        and decoded_s < source.declared_s - max(TRUNCATION_TOLERANCE_S, 0.005 * source.declared_s)
    ):
        raise InvalidAudioError(
            f"truncated: {source.format} declares {source.declared_s:.2f} s, "
            f"only {decoded_s:.2f} s decodable"
        )
    return DecodedAudio(samples, source.sample_rate_hz, source.format, tuple(channels))


def read_audio_bytes(uri: str, *, max_bytes: int | None = None) -> bytes:
    """Read a local path or any URI ``pyarrow.fs.FileSystem.from_uri`` accepts.

    ``file://``, ``s3://``, ``gs://``, ``hdfs://``... With ``max_bytes``, at most
    ``max_bytes + 1`` bytes are read and a larger object raises ``UploadTooLargeError``.
    A missing object raises ``InvalidRequestError``; other I/O errors (network, auth)
    propagate so the caller can retry them.
    """
    limit = -1 if max_bytes is None else max_bytes + 1
    try:
        if "://" not in uri:
            with open(Path(uri).expanduser(), "rb") as f:
                data = f.read(limit)
        else:
            import pyarrow.fs

            fs, path = pyarrow.fs.FileSystem.from_uri(uri)
            with fs.open_input_stream(path) as stream:
                data = stream.read() if limit < 0 else stream.read(limit)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise InvalidRequestError(f"cannot read audio from {uri!r}: {exc}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise UploadTooLargeError(f"{uri!r} is larger than the {max_bytes}-byte limit")
    return bytes(data)


def sniff_container(data: bytes) -> str | None:
    """Our container name from the magic bytes, or ``None`` when it is not audio we know."""
    head = bytes(data[:64])
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"ID3") and len(head) >= 10:
        # An ID3v2 tag can precede MP3, AAC or (rarely) FLAC: look past it.
        size = _id3v2_size(head)
        after = sniff_container(data[size:]) if len(data) > size else None
        return after if after in ("flac", "aac") else "mp3"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "ogg"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head.startswith(b".snd"):
        return "au"
    if head.startswith(b"caff"):
        return "caf"
    if head.startswith(b"#!AMR"):
        return "amr"
    if head.startswith(bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")):
        return "asf"
    if len(head) >= 4 and head[0] == 0xFF and head[1] & 0xF0 == 0xF0 and head[1] & 0x06 == 0:
        return "aac"  # ADTS: 12-bit sync, layer bits 00
    if len(head) >= 4 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        layer, bitrate, rate = (head[1] >> 1) & 3, head[2] >> 4, (head[2] >> 2) & 3
        if layer != 0 and bitrate != 0xF and rate != 3:
            return "mp3"  # MPEG audio frame sync with valid header fields
    return None


# -- sources: each yields float32 blocks shaped (frames, channels) -------------------------


@dataclass
class _Source:
    blocks: Iterator[np.ndarray]
    sample_rate_hz: int
    format: str
    declared_s: float | None  # from the header, None when unknown
    check_truncation: bool  # compare declared_s with what decodes
    close: Callable[[], None]


def _open_soundfile(data: bytes) -> _Source | None:
    """libsndfile source, or None when it cannot open the data (then PyAV tries)."""
    import soundfile as sf

    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    fmt = f"{f.format.lower()}/{f.subtype.lower()}"
    try:
        _check_rate(f.samplerate)
    except InvalidAudioError:
        f.close()
        raise
    declared = f.frames / f.samplerate if f.frames > 0 else None

    def blocks() -> Iterator[np.ndarray]:
        try:
            # read() in a loop, not f.blocks(): libsndfile opens some codecs (GSM 6.10 in
            # WAV, telephony's) as not seekable, and blocks() refuses those.
            while len(block := f.read(BLOCK_FRAMES, dtype="float32", always_2d=True)):
                yield block
        except (sf.LibsndfileError, RuntimeError) as exc:  # e.g. "flac decoder lost sync"
            raise InvalidAudioError(f"corrupt or truncated {fmt} stream: {exc}") from exc

    # libsndfile reads a WAV up to what is present; FLAC's STREAMINFO count is checked.
    truncation = f.format == "FLAC"
    return _Source(blocks(), f.samplerate, fmt, declared, truncation, close=f.close)


def _open_pyav(data: bytes, container: str, wav: _WavHeader | None) -> _Source:
    import av

    try:
        handle = av.open(
            io.BytesIO(data), mode="r", format=PYAV_DEMUXERS[container], metadata_errors="replace"
        )
    except av.FFmpegError as exc:
        raise InvalidAudioError(f"cannot open {container} data: {exc}") from exc
    try:
        if not handle.streams.audio:
            raise InvalidAudioError(f"{container} file has no audio stream")
        stream = handle.streams.audio[0]
        if stream.codec_context is None:  # ffmpeg knows the container but has no decoder
            what = f"format tag 0x{wav.format_tag:04x}" if wav is not None else "its codec"
            raise UnsupportedCodecError(f"unsupported codec: {container} audio with {what}")
        rate = stream.codec_context.sample_rate
        _check_rate(rate)
    except Exception:
        handle.close()
        raise
    fmt = f"{container}/{stream.codec_context.codec.canonical_name}"
    # Trust only durations read from a header (MP4 mdhd, Matroska Duration, MP3 Xing/Info
    # frame count, Ogg's last granule...). Where there is none (ADTS AAC, AMR, MP3 without
    # a Xing tag) ffmpeg fills in file size / first bitrate, which is wrong for VBR.
    trusted = container in TRUSTED_DURATION_CONTAINERS or (
        container == "mp3" and _has_mp3_info_tag(data)
    )
    if trusted and stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
    elif container == "matroska" and handle.duration is not None:
        declared = handle.duration / 1_000_000
    else:
        declared = None

    frames = _decoded_frames(handle, stream)

    def blocks() -> Iterator[np.ndarray]:
        to_float = av.AudioResampler(format="fltp")  # sample-format conversion only
        try:
            for frame in frames():
                if frame.sample_rate != rate:
                    raise InvalidAudioError(
                        f"{fmt}: sample rate changes mid-stream ({rate} -> {frame.sample_rate} Hz)"
                    )
                for planar in to_float.resample(frame):
                    yield planar.to_ndarray().T
        except av.FFmpegError as exc:
            raise InvalidAudioError(f"corrupt or truncated {fmt} stream: {exc}") from exc
        except ValueError as exc:  # the resampler refuses a mid-stream layout change
            raise InvalidAudioError(f"{fmt}: stream layout changes mid-stream: {exc}") from exc

    return _Source(blocks(), rate, fmt, declared, check_truncation=True, close=handle.close)


# ffmpeg's own AMR decoders stop at frame types they do not implement ("Not yet
# implemented in FFmpeg": the comfort-noise frames of phones' and sox's discontinuous
# transmission); the opencore decoders that PyAV's wheels bundle decode every AMR frame.
_PREFERRED_DECODERS = {"amrnb": "libopencore_amrnb", "amrwb": "libopencore_amrwb"}


def _decoded_frames(handle, stream) -> Callable[[], Iterator]:
    """The stream's frames, through :data:`_PREFERRED_DECODERS`' decoder where PyAV has it."""
    import av

    preferred = _PREFERRED_DECODERS.get(stream.codec_context.codec.name)
    if preferred is None or preferred not in av.codecs_available:
        return lambda: handle.decode(stream)
    context = av.CodecContext.create(preferred, "r")
    context.sample_rate = stream.codec_context.sample_rate

    def frames() -> Iterator:
        for packet in handle.demux(stream):
            yield from context.decode(packet)  # the last, empty packet flushes

    return frames


def _to_mono_16k(
    blocks: Iterator[np.ndarray], rate_hz: int, limits: AudioSettings
) -> tuple[np.ndarray, float]:
    """Average channels, validate, resample to 16 kHz; returns (samples, source seconds)."""
    import soxr

    resampler = (
        None
        if rate_hz == SAMPLE_RATE_HZ
        else soxr.ResampleStream(rate_hz, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
    )
    max_frames = limits.max_duration_s * rate_hz
    out: list[np.ndarray] = []
    num_frames = 0
    for block in blocks:
        _check_block(block)
        mono = _average_channels(block)
        num_frames += len(mono)
        if num_frames > max_frames:
            raise AudioTooLongError(f"audio is longer than the {limits.max_duration_s:.0f} s limit")
        out.append(resampler.resample_chunk(mono) if resampler else mono)
    if num_frames == 0:
        raise InvalidAudioError("no samples: the audio is empty")
    if resampler is not None:
        out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    samples = np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
    if len(samples) == 0:  # e.g. 1 frame at 48 kHz: a third of a sample at 16 kHz
        raise InvalidAudioError(
            f"no samples: {num_frames} frame(s) at {rate_hz} Hz is shorter than one sample "
            f"at {SAMPLE_RATE_HZ} Hz"
        )
    return samples, num_frames / rate_hz


def _to_channels_16k(
    blocks: Iterator[np.ndarray], rate_hz: int, limits: AudioSettings
) -> tuple[list[np.ndarray], float]:
    """As :func:`_to_mono_16k`, keeping channels: one 16 kHz array per source channel."""
    import soxr

    resampler = None
    max_frames = limits.max_duration_s * rate_hz
    out: list[np.ndarray] = []
    num_frames = 0
    for block in blocks:
        _check_block(block)
        if resampler is None and rate_hz != SAMPLE_RATE_HZ:
            resampler = soxr.ResampleStream(
                rate_hz, SAMPLE_RATE_HZ, block.shape[1], dtype="float32", quality="HQ"
            )
        num_frames += len(block)
        if num_frames > max_frames:
            raise AudioTooLongError(f"audio is longer than the {limits.max_duration_s:.0f} s limit")
        block = np.ascontiguousarray(block, dtype=np.float32)
        out.append(resampler.resample_chunk(block) if resampler else block)
    if num_frames == 0:
        raise InvalidAudioError("no samples: the audio is empty")
    if resampler is not None:
        width = out[0].shape[1]
        out.append(resampler.resample_chunk(np.zeros((0, width), np.float32), last=True))
    joined = np.concatenate(out)
    if len(joined) == 0:
        raise InvalidAudioError(
            f"no samples: {num_frames} frame(s) at {rate_hz} Hz is shorter than one sample "
            f"at {SAMPLE_RATE_HZ} Hz"
        )
    channels = [np.ascontiguousarray(joined[:, c]) for c in range(joined.shape[1])]
    return channels, num_frames / rate_hz


def _check_block(block: np.ndarray) -> None:
    """NaN/Inf, or finite but absurd float samples (a damaged float WAV: 3e38, which
    overflow to Inf in the channel average, the resampler or the model's power spectrum),
    are a 400."""
    peak = float(np.abs(block).max()) if block.size else 0.0
    if not peak <= MAX_ABS_AMPLITUDE:  # also true for NaN
        if not np.isfinite(peak):
            raise InvalidAudioError("invalid samples: the audio contains NaN or Inf values")
        raise InvalidAudioError(
            f"invalid samples: peak amplitude {peak:.3g}, over {MAX_ABS_AMPLITUDE:g} "
            "(full scale is 1.0)"
        )


def _average_rows(channels: list[np.ndarray]) -> np.ndarray:
    mono = channels[0].copy()
    for channel in channels[1:]:
        mono += channel
    mono *= np.float32(1.0 / len(channels))
    return mono


def _average_channels(block: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,); column sums beat ``mean(axis=1)`` ~5x here."""
    mono = np.array(block[:, 0], dtype=np.float32)
    for channel in range(1, block.shape[1]):
        mono += block[:, channel]
    if block.shape[1] > 1:
        mono *= np.float32(1.0 / block.shape[1])
    return mono


def _check_rate(rate_hz: int) -> None:
    if not MIN_SAMPLE_RATE_HZ <= rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidAudioError(f"implausible sample rate {rate_hz} Hz")


# -- container checks that the decoders do not make ---------------------------------------


@dataclass(frozen=True)
class _WavHeader:
    format_tag: int  # WAVE_FORMAT_*, the sub-format for WAVE_FORMAT_EXTENSIBLE
    num_channels: int
    sample_rate_hz: int
    block_align: int
    bits_per_sample: int
    data_bytes: int


def _parse_wav_header(data: bytes) -> _WavHeader:
    """Walk the RIFF chunks; reject truncated files and headers that lie about the data.

    libsndfile and ffmpeg both decode "whatever is there" when a data chunk declares more
    bytes than the file holds, which silently turns a truncated upload into short audio.
    """
    u16 = lambda at: int.from_bytes(data[at : at + 2], "little")  # noqa: E731
    u32 = lambda at: int.from_bytes(data[at : at + 4], "little")  # noqa: E731
    rf64_data_bytes = None
    fmt: tuple[int, int, int, int, int] | None = None
    pos = 12
    while True:
        if pos + 8 > len(data):
            raise InvalidAudioError("truncated: wav file ends before its data chunk")
        chunk_id, size, body = data[pos : pos + 4], u32(pos + 4), pos + 8
        if not _is_chunk_id(chunk_id):
            raise InvalidAudioError(f"corrupt wav: invalid chunk id {chunk_id!r} at byte {pos}")
        if chunk_id == b"data":
            break
        if body + size > len(data):
            raise InvalidAudioError(
                f"truncated: wav {chunk_id.decode()!r} chunk declares {size} bytes, "
                f"{len(data) - body} present"
            )
        if chunk_id == b"ds64" and size >= 16:  # RF64/BW64: 64-bit sizes live here
            rf64_data_bytes = int.from_bytes(data[body + 8 : body + 16], "little")
        elif chunk_id == b"fmt ":
            if size < 16:
                raise InvalidAudioError("corrupt wav: fmt chunk too short")
            tag = u16(body)
            if tag == _WAV_EXTENSIBLE and size >= 26:
                tag = u16(body + 24)  # first two bytes of the sub-format GUID
            fmt = (tag, u16(body + 2), u32(body + 4), u16(body + 12), u16(body + 14))
        pos = body + size + (size & 1)  # chunks are padded to even sizes

    if fmt is None:
        raise InvalidAudioError("corrupt wav: no fmt chunk before the data chunk")
    tag, channels, rate, block_align, bits = fmt
    if size == 0xFFFFFFFF and rf64_data_bytes is not None:
        size = rf64_data_bytes
    present = len(data) - body
    if size > present:
        raise InvalidAudioError(
            f"truncated: header declares {size} bytes of data, {present} present"
        )
    if channels == 0 or block_align == 0:
        raise InvalidAudioError("corrupt wav: zero channels or zero block size in fmt chunk")
    _check_rate(rate)
    if tag in (_WAV_PCM, _WAV_FLOAT):
        if bits not in (8, 16, 24, 32, 64) or block_align != channels * bits // 8:
            raise InvalidAudioError(
                f"corrupt wav: {channels} channels x {bits} bits do not make "
                f"{block_align}-byte frames"
            )
        if size % block_align:
            raise InvalidAudioError(
                f"corrupt wav: data chunk of {size} bytes is not whole {block_align}-byte frames"
            )
    junk = _trailing_junk_bytes(data, body + size + (size & 1))
    if junk > MAX_WAV_TRAILING_JUNK_BYTES:
        raise InvalidAudioError(
            f"inconsistent wav header: the data chunk declares {size} bytes, but {junk} bytes "
            "after it are not RIFF chunks (the header understates the data length)"
        )
    return _WavHeader(tag, channels, rate, block_align, bits, size)


def _is_chunk_id(chunk_id: bytes) -> bool:
    return len(chunk_id) == 4 and all(32 <= b < 127 for b in chunk_id)


def _trailing_junk_bytes(data: bytes, pos: int) -> int:
    """Bytes from ``pos`` on that do not parse as well-formed RIFF chunks."""
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if not _is_chunk_id(data[pos : pos + 4]) or pos + 8 + size > len(data):
            break
        pos += 8 + size + (size & 1)
    return max(0, len(data) - pos)


def _id3v2_size(head: bytes) -> int:
    """Bytes taken by a leading ID3v2 tag (10-byte header + syncsafe size), else 0."""
    if not head.startswith(b"ID3") or len(head) < 10:
        return 0
    size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
    return 10 + (size | (head[9] & 0x7F))


def _has_mp3_info_tag(data: bytes) -> bool:
    """Whether the first MP3 frame is a Xing/Info/VBRI frame (it holds the frame count)."""
    start = _id3v2_size(bytes(data[:10]))
    first_frame = bytes(data[start : start + 200])
    return any(tag in first_frame for tag in (b"Xing", b"Info", b"VBRI"))


def _check_ogg_complete(data: bytes) -> None:
    """A complete Ogg stream ends with a whole page flagged end-of-stream.

    Neither libsndfile nor ffmpeg reports an Ogg file cut short: they decode up to the last
    whole page. The last page is found by its capture pattern and its header parsed.
    """
    start = data.rfind(b"OggS")
    if start < 0 or start + 27 > len(data):
        raise InvalidAudioError("truncated: ogg file ends inside a page header")
    num_segments = data[start + 26]
    table = data[start + 27 : start + 27 + num_segments]
    end = start + 27 + num_segments + sum(table)
    if len(table) < num_segments or end > len(data):
        raise InvalidAudioError(
            f"truncated: last ogg page declares {end - start} bytes, {len(data) - start} present"
        )
    if not data[start + 5] & 0x04:
        raise InvalidAudioError("truncated: ogg stream has no end-of-stream page")
