"""Fuzz the audio decoder (and optionally a running service) with mutated audio files.

Good files (WAV, FLAC, Ogg Vorbis/Opus, MP3 of an espeak-ng sentence) are mutated: cuts,
bit flips, byte smashes, insertions, deletions, corrupted header fields (RIFF/fmt/data,
FLAC STREAMINFO, Ogg pages, MP3 frames), splices, plus empty bodies and random bytes.
Every case must decode to sane audio or raise one of the typed errors the ingress answers
with a 4xx, within a time bound: never another exception (a 500), never a hang.

    python -m scripts.fuzz --cases 20000                    # in-process decode_audio
    python -m scripts.fuzz --cases 2000 --url http://127.0.0.1:8000 --http-sample 300

With ``--url`` a sample also goes over HTTP (200 or a 4xx JSON error each), and a good file
is transcribed before and after (same text). Failing cases are written to ``--out``. The
suite runs the same generator (``tests/scripts/test_fuzz.py``).
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.config import AudioSettings
from serve_app.core import errors
from serve_app.core.audio import SAMPLE_RATE_HZ, DecodedAudio, decode_audio
from serve_app.tools.speech import SENTENCES, synthesize

# What decode_audio may raise: the client's fault, every one of them.
DECODE_ERRORS = (
    errors.InvalidAudioError, errors.UnsupportedCodecError, errors.UploadTooLargeError,
    errors.AudioTooLongError, errors.InvalidRequestError,
)  # fmt: skip
# An accepted case sent over HTTP costs a VAD and a recognizer pass: only short ones are.
MAX_HTTP_ACCEPTED_S = 8.0


@dataclass(frozen=True)
class Case:
    name: str  # "<seed>/<mutation>#<n>", stable for a given --seed
    data: bytes


@dataclass(frozen=True)
class Outcome:
    case: Case
    kind: str  # "ok", an AsrError class name, "crash:<exception>" or "timeout"
    seconds: float
    duration_s: float | None = None  # decoded audio seconds when kind == "ok"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind.startswith("crash:") or self.kind == "timeout"


# -- good seed files ----------------------------------------------------------------------


def seed_files(speech_16k: np.ndarray) -> dict[str, bytes]:
    """The speech encoded in the containers clients send most, at several rates/layouts."""
    import soxr

    from scripts.common.audio import wav_bytes as sf_bytes

    def at(rate: int, stereo: bool) -> np.ndarray:
        x = soxr.resample(speech_16k, SAMPLE_RATE_HZ, rate).astype(np.float32)
        return np.stack([x, 0.5 * x], axis=1) if stereo else x

    return {
        "wav16k": sf_bytes(at(16000, False), 16000, "WAV", "PCM_16"),
        "wav44k-stereo-24": sf_bytes(at(44100, True), 44100, "WAV", "PCM_24"),
        "wav8k-float": sf_bytes(at(8000, False), 8000, "WAV", "FLOAT"),
        "flac48k-stereo": sf_bytes(at(48000, True), 48000, "FLAC", "PCM_16"),
        "ogg-vorbis44k": sf_bytes(at(44100, True), 44100, "OGG", "VORBIS"),
        "ogg-opus48k": sf_bytes(at(48000, False), 48000, "OGG", "OPUS"),
        "mp3-44k": _mp3_bytes(at(44100, True), 44100),
    }


def _mp3_bytes(x: np.ndarray, rate: int) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x.T), format="fltp", layout="stereo"
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


# -- mutations ----------------------------------------------------------------------------


def _set(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    size = struct.calcsize(fmt)
    if at + size <= len(out):
        out[at : at + size] = struct.pack(fmt, value)
    return bytes(out)


def _find(data: bytes, tag: bytes, start: int = 0) -> int:
    at = data.find(tag, start)
    return at if at >= 0 else 0


def wav_header_mutations(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Field edits of a canonical RIFF/WAVE header (fmt first, then data)."""
    fmt = _find(data, b"fmt ") + 8  # start of the fmt body
    chunk = _find(data, b"data")
    u16, u32, huge = "<H", "<I", 0xFFFFFFFF

    def values(*numbers: int, **named: int) -> dict[str, int]:
        return {**{str(n): n for n in numbers}, **named}

    fields = {  # field: (offset, struct format, {label: value})
        "riff-size": (4, u32, values(0, small=4, huge=huge)),
        "fmt-size": (fmt - 4, u32, values(0, 15, huge=0x7FFFFFFF)),
        "format-tag": (fmt, u16, values(0, adpcm=2, alaw=6, mp3=0x55, extensible=0xFFFE,
                                        ffff=0xFFFF)),
        "channels": (fmt + 2, u16, values(0, 3, 255, 1024, 65535)),
        "rate": (fmt + 4, u32, values(0, 1, 999, 1000, 8000, 22050, 96000, 768000, 768001,
                                      **{"2^31": 1 << 31}, huge=huge)),
        "byte-rate": (fmt + 8, u32, values(0, huge=huge)),
        "block-align": (fmt + 12, u16, values(0, 1, 3, 65535)),
        "bits": (fmt + 14, u16, values(0, 1, 7, 12, 17, 33, 64, 65535)),
        "data-size": (chunk + 4, u32, values(0, 1, odd=1001, huge=huge,
                                             half=(len(data) - chunk - 8) // 2)),
    }  # fmt: skip
    for field, (at, code, edits) in fields.items():
        for label, value in edits.items():
            yield f"{field}-{label}", _set(data, at, code, value)
    # Consistent headers with odd layouts: many channels, block align that matches.
    for channels, bits in [(65535, 8), (4096, 8), (1024, 16), (7, 24), (2, 12)]:
        block = channels * ((bits + 7) // 8)
        edited = _set(data, fmt + 2, u16, channels)
        edited = _set(edited, fmt + 12, u16, block & 0xFFFF)
        edited = _set(edited, fmt + 14, u16, bits)
        yield f"layout-{channels}ch-{bits}bit", edited
    yield "chunk-id-garbage", data[: fmt - 8] + b"\x00\xff\x01\x02" + data[fmt - 4 :]
    yield "data-before-fmt", data[:12] + data[chunk:] + data[12:chunk]
    yield "no-data-chunk", data[:chunk]
    yield "two-fmt-chunks", data[:chunk] + data[fmt - 8 : chunk] + data[chunk:]
    yield "rf64-without-ds64", b"RF64" + data[4:]


def flac_header_mutations(data: bytes) -> Iterator[tuple[str, bytes]]:
    """STREAMINFO edits (it follows 'fLaC' and a 4-byte block header)."""
    si = 8  # STREAMINFO body
    at = si + 10  # 20-bit rate, 3-bit channels-1, 5-bit bps-1, 36-bit total frames
    word = int.from_bytes(data[at : at + 8], "big")
    fields = (  # name, shift, width, values, shown as value + offset (channels, bits)
        ("rate", 44, 20, (0, 1, 999, 8000, 96000, 655350, 0xFFFFF), 0),
        ("channels", 41, 3, (0, 7), 1),
        ("bits", 36, 5, (0, 2, 7, 31), 1),
        ("frames", 0, 36, (0, 1, 0xFFFFFFFFF), 0),
    )
    for name, shift, width, values, offset in fields:
        mask = (1 << width) - 1
        for value in values:
            edited = (word & ~(mask << shift)) | ((value & mask) << shift)
            packed = data[:at] + edited.to_bytes(8, "big") + data[at + 8 :]
            yield f"streaminfo-{name}-{value + offset}", packed
    yield "streaminfo-min-block-0", _set(data, si, ">H", 0)
    yield "streaminfo-max-block-0", _set(data, si + 2, ">H", 0)
    yield "block-header-length-huge", data[:5] + b"\xff\xff\xff" + data[8:]
    yield "block-type-invalid", bytes([data[0], data[1], data[2], data[3], 0x7F]) + data[5:]


def ogg_mutations(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Page header edits: version, header type, granule, serial, segment count, lacing."""
    pages = [i for i in range(len(data)) if data.startswith(b"OggS", i)][:4]
    for n, page in enumerate(pages):
        yield f"page{n}-version", _set(data, page + 4, "<B", 1)
        yield f"page{n}-type-ff", _set(data, page + 5, "<B", 0xFF)
        yield f"page{n}-granule-max", _set(data, page + 6, "<Q", 0x7FFFFFFFFFFFFFFF)
        yield f"page{n}-granule-neg", _set(data, page + 6, "<q", -5)
        yield f"page{n}-serial", _set(data, page + 14, "<I", 0xDEADBEEF)
        yield f"page{n}-segments-255", _set(data, page + 26, "<B", 255)
        yield f"page{n}-segments-0", _set(data, page + 26, "<B", 0)
    last = data.rfind(b"OggS")
    yield "last-page-granule-huge", _set(data, last + 6, "<Q", 1 << 40)
    yield "last-page-granule-0", _set(data, last + 6, "<Q", 0)
    # Opus/Vorbis id header: channel count and rate sit right after the codec magic.
    for magic, ch_at, rate_at in ((b"OpusHead", 9, 12), (b"\x01vorbis", 11, 12)):
        at = data.find(magic)
        if at >= 0:
            for ch in (0, 255):
                yield f"id-channels-{ch}", _set(data, at + ch_at, "<B", ch)
            for rate in (0, 1, 0xFFFFFFFF):
                yield f"id-rate-{rate}", _set(data, at + rate_at, "<I", rate)


def mp3_mutations(data: bytes, rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    """Frame-header bit edits at the first frames' sync words."""
    syncs = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0]
    for n, at in enumerate(syncs[:6]):
        for name, byte, mask in (
            ("version", 1, 0x18),
            ("layer", 1, 0x06),
            ("bitrate", 2, 0xF0),
            ("rate", 2, 0x0C),
            ("mode", 3, 0xC0),
        ):
            out = bytearray(data)
            out[at + byte] ^= mask & int(rng.integers(1, 256))
            yield f"frame{n}-{name}", bytes(out)
    xing = data.find(b"Xing")
    if xing < 0:
        xing = data.find(b"Info")
    if xing >= 0:
        yield "xing-frames-0", _set(data, xing + 8, ">I", 0)
        yield "xing-frames-huge", _set(data, xing + 8, ">I", 0xFFFFFFFF)


RANDOM_MUTATIONS = frozenset(
    "cut-random bit-flips header-bit-flips header-smash insert-random delete-range "
    "header-then-garbage byte-smash zero-tail".split()
)


def generic_mutations(data: bytes, rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    """Format-blind damage: cuts, bit flips, smashes, insertions, deletions."""
    n = len(data)
    for cut in (1, 3, 4, 8, 11, 12, 16, 20, 24, 36, 40, 44, 48, 64, 100, 512, n - 1):
        if cut < n:
            yield f"cut-at-{cut}", data[:cut]
    while True:
        kind = int(rng.integers(0, 9))
        out = bytearray(data)
        if kind == 0:
            yield "cut-random", data[: int(rng.integers(1, n))]
        elif kind == 1:
            for _ in range(int(rng.integers(1, 8))):
                at = int(rng.integers(0, n))
                out[at] ^= 1 << int(rng.integers(0, 8))
            yield "bit-flips", bytes(out)
        elif kind == 2:
            for _ in range(int(rng.integers(1, 64))):
                at = int(rng.integers(0, min(n, 256)))
                out[at] ^= 1 << int(rng.integers(0, 8))
            yield "header-bit-flips", bytes(out)
        elif kind == 3:
            at = int(rng.integers(0, min(n, 200)))
            out[at : at + 4] = rng.bytes(4)
            yield "header-smash", bytes(out)
        elif kind == 4:
            at, length = int(rng.integers(0, n)), int(rng.integers(1, 4096))
            out[at:at] = rng.bytes(length)
            yield "insert-random", bytes(out)
        elif kind == 5:
            at = int(rng.integers(0, n))
            del out[at : at + int(rng.integers(1, 4096))]
            yield "delete-range", bytes(out)
        elif kind == 6:
            keep = int(rng.integers(4, min(n, 256)))
            yield "header-then-garbage", data[:keep] + rng.bytes(int(rng.integers(0, 65536)))
        elif kind == 7:
            for _ in range(int(rng.integers(1, 200))):
                out[int(rng.integers(0, n))] = int(rng.integers(0, 256))
            yield "byte-smash", bytes(out)
        else:
            at = int(rng.integers(0, n))
            yield "zero-tail", bytes(out[:at]) + bytes(n - at)


def standalone_cases(rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    """Cases made from nothing: empty, random, zeros, a magic number then garbage."""
    yield "empty", b""
    yield "one-byte", b"\x00"
    yield "zeros-64k", bytes(65536)
    yield "ff-64k", b"\xff" * 65536
    for size in (7, 100, 4096, 300_000):
        yield f"random-{size}", rng.bytes(size)
    magics = {
        "riff": b"RIFF\x24\x00\x00\x00WAVEfmt ",
        "rf64": b"RF64\xff\xff\xff\xffWAVEds64",
        "flac": b"fLaC",
        "ogg": b"OggS\x00\x02",
        "id3": b"ID3\x04\x00\x00\x00\x00\x00\x00",
        "id3-huge": b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f",
        "mp4": b"\x00\x00\x00\x20ftypM4A ",
        "mkv": b"\x1a\x45\xdf\xa3",
        "mp3-sync": b"\xff\xfb\x90\x64",
        "adts": b"\xff\xf1\x50\x80",
        "aiff": b"FORM\x00\x00\x10\x00AIFF",
        "au": b".snd\x00\x00\x00\x18",
        "caf": b"caff\x00\x01\x00\x00",
        "amr": b"#!AMR\n",
        "asf": bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"),
    }
    for name, magic in magics.items():
        yield f"{name}-magic-only", magic
        yield f"{name}-magic-garbage", magic + rng.bytes(int(rng.integers(16, 20000)))


def generate(seeds: dict[str, bytes], num_cases: int, seed: int = 0) -> list[Case]:
    """``num_cases`` cases: every structured edit of every seed, then random ones round-robin."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []
    counts: Counter[str] = Counter()

    def add(prefix: str, items: Iterator[tuple[str, bytes]], limit: int | None = None) -> None:
        for i, (name, data) in enumerate(items):
            if limit is not None and i >= limit:
                return
            key = f"{prefix}/{name}"
            cases.append(Case(f"{key}#{counts[key]}", data))
            counts[key] += 1

    add("none", standalone_cases(rng))
    for name, data in seeds.items():
        if name.startswith("wav"):
            add(name, wav_header_mutations(data))
        elif name.startswith("flac"):
            add(name, flac_header_mutations(data))
        elif name.startswith("ogg"):
            add(name, ogg_mutations(data))
        elif name.startswith("mp3"):
            add(name, mp3_mutations(data, rng))
    names = list(seeds)
    splice = iter(
        (f"{a}+{b}", seeds[a][: len(seeds[a]) // 2] + seeds[b][len(seeds[b]) // 3 :])
        for a in names
        for b in names
        if a != b
    )
    add("splice", splice, limit=max(0, min(len(names) ** 2, num_cases - len(cases))))
    streams = {name: generic_mutations(data, rng) for name, data in seeds.items()}
    while len(cases) < num_cases:
        for name in names:
            add(name, streams[name], limit=1)
    return cases


# -- running ------------------------------------------------------------------------------


def run_with_timeout(fn: Callable[[], DecodedAudio], timeout_s: float) -> tuple[object, bool]:
    """(result or exception, finished) of ``fn`` in a daemon thread, abandoned on timeout."""
    box: list[object] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # recorded, classified by the caller
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return (box[0] if box else None), bool(box)


def decode_case(case: Case, limits: AudioSettings, timeout_s: float) -> Outcome:
    """Run ``decode_audio`` on one case and classify what happened."""
    started = time.perf_counter()
    result, finished = run_with_timeout(lambda: decode_audio(case.data, limits), timeout_s)
    seconds = time.perf_counter() - started
    if not finished:
        return Outcome(case, "timeout", seconds)
    if isinstance(result, DecodedAudio):
        samples = result.samples
        problems = []
        if samples.dtype != np.float32 or samples.ndim != 1 or not samples.flags["C_CONTIGUOUS"]:
            problems.append(f"bad array {samples.dtype} {samples.shape}")
        if not len(samples) or not np.isfinite(samples).all():
            problems.append("empty or non-finite samples")
        if result.duration_s > limits.max_duration_s:
            problems.append(f"{result.duration_s:.1f} s over the limit")
        if problems:
            return Outcome(case, "crash:BadResult", seconds, detail="; ".join(problems))
        return Outcome(case, "ok", seconds, duration_s=result.duration_s)
    assert isinstance(result, BaseException)
    if isinstance(result, DECODE_ERRORS):  # the ingress answers each with a 4xx
        return Outcome(case, type(result).__name__, seconds, detail=str(result)[:200])
    return Outcome(case, f"crash:{type(result).__name__}", seconds, detail=repr(result)[:300])


def http_check(
    client, case: Case, model: str | None = None, timeout_s: float = 120.0, retries: int = 3
) -> tuple[int, str]:
    """POST one case; returns (status, problem or ""). A 503 "overloaded" with a
    Retry-After (admission on a busy machine) is "come back later", not a finding: the
    case is sent again after the wait, as OpenAI's client would, ``retries`` times."""
    import httpx

    data = {"model": model} if model else {}
    for attempt in range(retries + 1):
        try:
            r = client.post(
                "/v1/audio/transcriptions",
                files={"file": ("fuzz.bin", case.data, "application/octet-stream")},
                data=data,
                timeout=timeout_s,
            )
        except httpx.TimeoutException:
            return 0, "client timeout"
        retry_after = r.headers.get("retry-after")
        if r.status_code != 503 or retry_after is None or attempt == retries:
            break
        time.sleep(min(float(retry_after), 30.0))
    if r.status_code == 200:
        return 200, ""
    if not 400 <= r.status_code < 500:
        return r.status_code, f"status {r.status_code}: {r.text[:200]}"
    try:
        error = r.json()["error"]
        assert error["code"] and error["message"]
    except Exception:
        return r.status_code, f"{r.status_code} without a JSON error body: {r.text[:200]}"
    return r.status_code, ""


def http_sample(
    outcomes: list[Outcome], rejected: int, max_accepted: int, seed: int = 0
) -> list[Case]:
    """``rejected`` random rejected cases, and short accepted ones: every accepted edit of
    a named header field or layout first, then random damage, ``max_accepted`` in all."""
    rng = np.random.default_rng(seed + 1)
    short_ok = [
        o.case for o in outcomes if o.kind == "ok" and (o.duration_s or 0) <= MAX_HTTP_ACCEPTED_S
    ]
    named = [c for c in short_ok if _mutation(c) not in RANDOM_MUTATIONS]
    damaged = [c for c in short_ok if _mutation(c) in RANDOM_MUTATIONS]
    accepted = named[:max_accepted] + _pick(damaged, max(0, max_accepted - len(named)), rng)
    refused = _pick([o.case for o in outcomes if o.kind != "ok"], rejected, rng)
    return accepted + refused


def _mutation(case: Case) -> str:
    return case.name.split("/", 1)[-1].split("#", 1)[0]


def _pick(cases: list[Case], n: int, rng: np.random.Generator) -> list[Case]:
    picks = rng.choice(len(cases), size=min(n, len(cases)), replace=False)
    return [cases[int(i)] for i in sorted(picks)]


def summarize(outcomes: list[Outcome]) -> str:
    kinds = Counter(o.kind for o in outcomes)
    slowest = max(outcomes, key=lambda o: o.seconds)
    lines = [f"{len(outcomes)} cases: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common())]
    lines.append(f"slowest decode {slowest.seconds:.2f} s ({slowest.case.name}, {slowest.kind})")
    for o in [o for o in outcomes if o.failed][:20]:
        lines.append(f"FAIL {o.case.name}: {o.kind} {o.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=20.0, help="per decode")
    parser.add_argument("--max-duration-s", type=float, default=7200.0)
    parser.add_argument("--max-upload-bytes", type=int, default=25 * 1024 * 1024)
    parser.add_argument("--url", help="also send a sample to this service")
    parser.add_argument("--http-sample", type=int, default=200)
    parser.add_argument("--model", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--out", type=Path, default=Path("out/fuzz"), help="failing cases")
    args = parser.parse_args(argv)

    limits = AudioSettings(
        max_upload_bytes=args.max_upload_bytes, max_duration_s=args.max_duration_s
    )
    with tempfile.TemporaryDirectory() as tmp:  # a short sentence, 16 kHz mono float32
        speech = synthesize(SENTENCES[0], Path(tmp))
    seeds = seed_files(speech)
    cases = generate(seeds, args.cases, seed=args.seed)
    started = time.perf_counter()
    outcomes = [decode_case(c, limits, args.timeout_s) for c in cases]
    print(f"decoded in-process in {time.perf_counter() - started:.1f} s")
    print(summarize(outcomes))
    failed = [o for o in outcomes if o.failed]
    http_failures = 0
    if args.url:
        import httpx

        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        with httpx.Client(base_url=args.url, timeout=120, headers=headers) as client:

            def good_text() -> str:
                files = {"file": ("a.wav", seeds["wav16k"])}
                return str(client.post("/v1/audio/transcriptions", files=files).json()["text"])

            before = good_text()
            sample = http_sample(outcomes, args.http_sample, args.http_sample, args.seed)
            statuses: Counter[int] = Counter()
            for case in sample:
                status, problem = http_check(client, case, args.model)
                statuses[status] += 1
                if problem:
                    http_failures += 1
                    print(f"HTTP FAIL {case.name}: {problem}")
                    _save(args.out, case)
            after = good_text()
        print(f"HTTP: {len(sample)} sent, statuses {dict(sorted(statuses.items()))}")
        verdict = "same" if before == after else "DIFFERENT"
        print(f"good file before {before!r}, after {after!r}: {verdict}")
        http_failures += before != after
    for o in failed:
        _save(args.out, o.case)
    if failed or http_failures:
        print(f"failing cases written to {args.out}/")
    return 1 if failed or http_failures else 0


def _save(out: Path, case: Case) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / case.name.replace("/", "__").replace("#", "_")).write_bytes(case.data)


if __name__ == "__main__":
    sys.exit(main())
