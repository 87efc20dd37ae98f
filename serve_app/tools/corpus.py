"""The tuning and benchmark corpus: spoken recordings of 5 s to 10 min with pauses, cached.

The batch tuner (:mod:`serve_app.tools.tune_batch`) sweeps over its VAD segments and the
benchmark (``python -m scripts.bench``) runs every row on it; its command line builds (or
shows) one: ``python -m serve_app.tools.corpus --corpus-minutes 30``. Recordings are made
from espeak-ng sentences (:mod:`serve_app.tools.speech`: two voices, three speaking rates)
joined by pauses of 0.15 s to 8 s over a low noise floor, so FSMN-VAD cuts them into
segments of many lengths, as it would a meeting or a call. Durations follow a fixed cycle
of buckets (5-15 s, 15-60 s, 60-180 s, 5-10 min; the first long one is exactly 10 min)
until the requested total is reached, so any corpus of 12 min or more holds the whole
mixture.

Everything is deterministic for a given ``(minutes, seed)`` and cached:

    <root>/utterances/       one WAV per (sentence, voice, rate), shared by all corpora
    <root>/<corpus id>/      fileNNN.wav, corpus.json, manifest.parquet, vad-<hash>.json

so reruns reuse the files (``--corpus-dir`` in the tuner and the benchmark). The corpus is
English speech: Whisper tiny.en transcribes it; the random-weight Paraformer turns any
speech into gibberish, which is all a throughput benchmark needs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from serve_app.tools.speech import SAMPLE_RATE_HZ, SENTENCES, have_espeak, synthesize_wav

DEFAULT_ROOT = Path("/tmp/asr-bench-corpus")
CORPUS_VERSION = 1
VOICES = ("en-us", "en-gb")
RATES_WPM = (135, 160, 185)
# Duration buckets (seconds), visited in this order again and again.
BUCKET_CYCLE_S = ((5, 15), (15, 60), (5, 15), (60, 180), (5, 15), (15, 60), (300, 600))
MIN_FILE_S = 5.0
MAX_FILE_S = 600.0
NOISE_RMS = 0.002  # about -54 dBFS: a quiet room, not digital silence


@dataclass(frozen=True)
class CorpusFile:
    id: str
    path: str
    duration_s: float


@dataclass(frozen=True)
class Corpus:
    directory: Path
    files: tuple[CorpusFile, ...]
    minutes: float
    seed: int

    @property
    def total_s(self) -> float:
        return sum(f.duration_s for f in self.files)

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.parquet"

    def describe(self) -> str:
        durations = sorted(f.duration_s for f in self.files)
        return (
            f"{len(self.files)} files, {self.total_s / 60:.1f} min "
            f"(shortest {durations[0]:.1f} s, median {durations[len(durations) // 2]:.1f} s, "
            f"longest {durations[-1]:.1f} s), seed {self.seed}, {self.directory}"
        )


def target_durations_s(total_s: float, seed: int) -> list[float]:
    """File durations: buckets in a fixed cycle until ``total_s``; the first 5-10 min is 10 min."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    first_long = True
    while sum(out) < total_s:
        lo, hi = BUCKET_CYCLE_S[len(out) % len(BUCKET_CYCLE_S)]
        if hi == MAX_FILE_S and first_long:
            duration = MAX_FILE_S
            first_long = False
        else:
            duration = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        # The last file takes what is left (at least MIN_FILE_S).
        out.append(max(MIN_FILE_S, min(duration, total_s - sum(out))))
    return [round(d, 2) for d in out]


def _utterances(root: Path) -> list[np.ndarray]:
    folder = root / "utterances"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(SENTENCES):
        for voice in VOICES:
            for rate in RATES_WPM:
                path = folder / f"s{i:02d}_{voice}_{rate}.wav"
                if not path.exists():
                    tmp = path.with_name(path.stem + ".tmp.wav")
                    synthesize_wav(text, tmp, voice=voice, speed_wpm=rate)
                    tmp.rename(path)
                samples, rate_hz = sf.read(path, dtype="float32")
                assert rate_hz == SAMPLE_RATE_HZ
                out.append(_trim_silence(samples))
    return out


def _trim_silence(samples: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def _pause_s(rng: np.random.Generator) -> float:
    u = rng.uniform()
    if u < 0.65:
        return float(rng.uniform(0.15, 0.6))  # within a sentence group (VAD may merge)
    if u < 0.95:
        return float(rng.uniform(0.8, 2.5))  # between turns
    return float(rng.uniform(4.0, 8.0))  # a long silence


def compose(duration_s: float, utterances: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """Utterances and pauses until ``duration_s`` is filled, over a low noise floor."""
    rng = np.random.default_rng(seed)
    total = int(duration_s * SAMPLE_RATE_HZ)
    out = np.zeros(total, dtype=np.float32)
    pos = int(rng.uniform(0.2, 0.8) * SAMPLE_RATE_HZ)
    while True:
        utt = utterances[int(rng.integers(len(utterances)))] * float(rng.uniform(0.4, 0.9))
        if pos + len(utt) > total:
            break
        out[pos : pos + len(utt)] = utt
        pos += len(utt) + int(_pause_s(rng) * SAMPLE_RATE_HZ)
    out += rng.normal(0.0, NOISE_RMS, total).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


def corpus_id(minutes: float, seed: int) -> str:
    return f"v{CORPUS_VERSION}-{minutes:g}min-seed{seed}"


def build_corpus(minutes: float, *, root: Path = DEFAULT_ROOT, seed: int = 0) -> Corpus:
    """The corpus of ``minutes`` of audio, made once and then read from ``root``."""
    directory = root / corpus_id(minutes, seed)
    index = directory / "corpus.json"
    if index.exists():
        raw = json.loads(index.read_text())
        cached = tuple(CorpusFile(**f) for f in raw["files"])
        if all(Path(f.path).exists() for f in cached):
            return Corpus(directory, cached, minutes, seed)
    if not have_espeak():
        raise SystemExit(
            "the benchmark corpus is made with espeak-ng and sox: install them "
            "(bash scripts/setup.sh --test does) or pass --corpus-dir with a built corpus"
        )
    directory.mkdir(parents=True, exist_ok=True)
    utterances = _utterances(root)
    files: list[CorpusFile] = []
    for i, duration in enumerate(target_durations_s(minutes * 60.0, seed)):
        samples = compose(duration, utterances, seed * 100_003 + i)
        path = directory / f"file{i:03d}.wav"
        sf.write(path, samples, SAMPLE_RATE_HZ, subtype="PCM_16")
        duration_s = len(samples) / SAMPLE_RATE_HZ
        files.append(CorpusFile(id=path.stem, path=str(path), duration_s=duration_s))
    _write_manifest(directory, files)
    corpus = Corpus(directory, tuple(files), minutes, seed)
    index.write_text(
        json.dumps({"minutes": minutes, "seed": seed, "files": [asdict(f) for f in files]})
    )
    return corpus


def _write_manifest(directory: Path, files: Sequence[CorpusFile]) -> None:
    """The Ray Data job's manifest (``id``, ``audio``) for this corpus."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([f.id for f in files], pa.string()),
            "audio": pa.array([f.path for f in files], pa.string()),
        }
    )
    pq.write_table(table, directory / "manifest.parquet")


# -- VAD segments (for the forward-only floor and the tuner) ------------------------------


def vad_spans(
    corpus: Corpus, *, vad_settings_json: str, models_dir: Path | None
) -> dict[str, list[tuple[int, int]]]:
    """Per file, the segments this project's VAD step makes (``FsmnVad.segments``), cached.

    ``vad_settings_json`` is ``VadSettings.model_dump_json()``: the cache is per setting.
    """
    key = hashlib.sha1(vad_settings_json.encode()).hexdigest()[:12]
    cache = corpus.directory / f"vad-{key}.json"
    if cache.exists():
        raw = json.loads(cache.read_text())
        return {k: [tuple(s) for s in v] for k, v in raw.items()}  # type: ignore[misc]
    import torch

    from serve_app.config import VadSettings
    from serve_app.vad.detectors import FsmnVad

    threads = torch.get_num_threads()
    vad = FsmnVad(VadSettings.model_validate_json(vad_settings_json), models_dir=models_dir)
    torch.set_num_threads(threads)  # FunASR's loader sets its own thread count
    out: dict[str, list[tuple[int, int]]] = {}
    for f in corpus.files:
        samples, _ = sf.read(f.path, dtype="float32")
        out[f.id] = [(s.start_ms, s.end_ms) for s in vad.segments(samples)]
    torch.set_num_threads(threads)
    cache.write_text(json.dumps(out))
    return out


def pack_spans(
    spans: dict[str, list[tuple[int, int]]],
    pack_segments_s: float,
    corpus: Corpus | None = None,
) -> dict[str, list[tuple[int, int]]]:
    """The spans after the recognizer's segment packing (``pack_segments_s``), as served:
    with ``corpus``, segments are cut at pauses to fill pieces as the service does
    (``pack_pieces(samples=...)``); without, whole segments only."""
    from serve_app.core.segmentation import SpeechSegment, pack_segments

    max_piece_ms = round(pack_segments_s * 1000)
    paths = {f.id: f.path for f in corpus.files} if corpus is not None else {}
    out = {}
    for key, value in spans.items():
        samples = sf.read(paths[key], dtype="float32")[0] if key in paths else None
        out[key] = [
            (s.start_ms, s.end_ms)
            for s in pack_segments(
                [SpeechSegment(a, b) for a, b in value], max_piece_ms=max_piece_ms, samples=samples
            )
        ]
    return out


def load_segments(
    corpus: Corpus, spans: dict[str, list[tuple[int, int]]]
) -> list[tuple[str, np.ndarray]]:
    """(file id, samples) of every segment, decoded and cut (outside any timing)."""
    out = []
    for f in corpus.files:
        samples, _ = sf.read(f.path, dtype="float32")
        for start_ms, end_ms in spans[f.id]:
            out.append((f.id, np.ascontiguousarray(samples[start_ms * 16 : end_ms * 16])))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build (or show) the cached benchmark corpus.")
    parser.add_argument("--corpus-minutes", type=float, default=30.0)
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    corpus = build_corpus(args.corpus_minutes, root=args.corpus_dir, seed=args.seed)
    print(corpus.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
