"""Languages through the service: detection accuracy and WER/CER per language, next to
faster-whisper's own sequential ``transcribe`` of the same audio with the same weights.

Corpus per language: espeak-ng sentences (de, fr, es, zh: :data:`CORPUS`; one per file, or
``--sentences-per-file N`` joined by pauses), and with ``--audioeval`` the human-sounding
samples the ``pytest-audioeval`` wheel ships (es, fr, zh, it, pt, pl, ja, hi). Each file
goes to a running service without ``language`` (it detects it) as ``verbose_json``; the
reference is ``WhisperModel.transcribe(audio, beam_size=1)`` with its own detection.

    python -m serve_app.online.run ray_configs/serve_multilingual.yaml &   # serves whisper-base
    python -m scripts.language_eval --url http://127.0.0.1:8000 --model whisper-base
"""


# ruff: noqa: RUF001  (full-width CJK punctuation in the Mandarin sentences)

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scripts.fidelity import (
    LibraryReference,
    audioeval_languages,
    audioeval_utterances,
    http_transcribe_body,
)
from serve_app.core.evaluation import unit_error_rate

SAMPLE_RATE_HZ = 16_000
PAUSE_S = 0.6
# Whisper language code -> (espeak-ng voice, sentences)
CORPUS: dict[str, tuple[str, list[str]]] = {
    "de": (
        "de",
        [
            "Der Zug nach Berlin fährt jeden Morgen um acht Uhr ab.",
            "Wir haben gestern Abend ein neues Restaurant in der Stadt besucht.",
            "Das Wetter ist heute sonnig und ziemlich warm.",
            "Bitte schließen Sie das Fenster, bevor Sie das Büro verlassen.",
            "Meine Schwester lernt seit zwei Jahren Klavier spielen.",
        ],
    ),
    "fr": (
        "fr-fr",
        [
            "Le train pour Paris part tous les matins à huit heures.",
            "Nous avons visité un nouveau restaurant en ville hier soir.",
            "Il fait beau aujourd'hui et le ciel est tout bleu.",
            "Merci de fermer la fenêtre avant de quitter le bureau.",
            "Ma sœur apprend à jouer du piano depuis deux ans.",
        ],
    ),
    "es": (
        "es",
        [
            "El tren a Madrid sale todas las mañanas a las ocho.",
            "Anoche visitamos un restaurante nuevo en el centro de la ciudad.",
            "Hoy hace buen tiempo y el cielo está despejado.",
            "Por favor, cierre la ventana antes de salir de la oficina.",
            "Mi hermana aprende a tocar el piano desde hace dos años.",
        ],
    ),
    "zh": (
        "cmn",
        [
            "今天天气很好，我们去公园散步吧。",
            "这趟火车每天早上八点出发。",
            "请在离开办公室之前关上窗户。",
            "我妹妹学习弹钢琴已经两年了。",
            "昨天晚上我们在城里吃了一顿晚饭。",
        ],
    ),
}


@dataclass(frozen=True)
class Sample:
    corpus: str
    language: str
    text: str
    audio: np.ndarray


@dataclass
class Row:
    corpus: str
    language: str
    files: int
    detected_service: int
    detected_library: int
    agree: int
    error_rate_service: float
    error_rate_library: float
    unit: str
    detected_as: dict[str, int]


def espeak_samples(languages: Sequence[str], sentences_per_file: int, tmp: Path) -> list[Sample]:
    from serve_app.tools.speech import concat_with_pauses, synthesize

    out = []
    for language in languages:
        voice, sentences = CORPUS[language]
        spoken = [synthesize(text, tmp, voice=voice) for text in sentences]
        for start in range(0, len(sentences), sentences_per_file):
            group = range(start, min(start + sentences_per_file, len(sentences)))
            audio = concat_with_pauses([spoken[i] for i in group], PAUSE_S)
            text = " ".join(sentences[i] for i in group)
            out.append(Sample("espeak", language, text, audio))
    return out


def audioeval_samples(cache: Path, languages: Sequence[str] | None) -> list[Sample]:
    out = []
    for language in languages or audioeval_languages(cache):
        for utt in audioeval_utterances(cache, language):
            out.append(Sample("audioeval", language, utt.text, utt.samples))
    return out


def service_transcribe(url: str, model: str | None, audio: np.ndarray) -> tuple[str, str]:
    """(detected language, text) of one request without ``language`` (verbose_json)."""
    body = http_transcribe_body(url, audio, model, response_format="verbose_json")
    return str(body.get("language") or ""), str(body["text"])


def evaluate(
    samples: Sequence[Sample],
    service: object,
    library: object,
) -> list[Row]:
    """``service`` and ``library``: callables audio -> (language, text)."""
    groups: dict[tuple[str, str], list[tuple[Sample, tuple[str, str], tuple[str, str]]]] = {}
    for sample in samples:
        ours = service(sample.audio)  # type: ignore[operator]
        theirs = library(sample.audio)  # type: ignore[operator]
        groups.setdefault((sample.corpus, sample.language), []).append((sample, ours, theirs))
    rows = []
    for (corpus, language), items in groups.items():
        refs = [s.text for s, _, _ in items]
        detected_as: dict[str, int] = {}
        for _, (lang, _), _ in items:
            detected_as[lang] = detected_as.get(lang, 0) + 1
        rows.append(
            Row(
                corpus=corpus,
                language=language,
                files=len(items),
                detected_service=sum(o[0] == language for _, o, _ in items),
                detected_library=sum(t[0] == language for _, _, t in items),
                agree=sum(o[0] == t[0] for _, o, t in items),
                error_rate_service=unit_error_rate(refs, [o[1] for _, o, _ in items], language),
                error_rate_library=unit_error_rate(refs, [t[1] for _, _, t in items], language),
                unit="CER" if language in ("zh", "ja") else "WER",
                detected_as=detected_as,
            )
        )
    return rows


def render(rows: Sequence[Row]) -> str:
    lines = [
        "| corpus | language | files | detected right: service / faster-whisper | agree "
        "| error rate: service / faster-whisper | service heard it as |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        heard = ", ".join(f"{k or '?'} {v}" for k, v in sorted(r.detected_as.items()))
        lines.append(
            f"| {r.corpus} | {r.language} | {r.files} | {r.detected_service} / "
            f"{r.detected_library} | {r.agree}/{r.files} | {r.unit} {r.error_rate_service:.3f}"
            f" / {r.error_rate_library:.3f} | {heard} |"
        )
    files = sum(r.files for r in rows)
    right = sum(r.detected_service for r in rows)
    lib = sum(r.detected_library for r in rows)
    lines.append(f"\nall: {files} files, detected right {right} (service) / {lib} (library)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="a running service")
    parser.add_argument("--model", default="whisper-base")
    parser.add_argument("--model-dir", type=Path, help="default: <models dir>/whisper-base")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--languages", default="de,fr,es,zh", help="espeak corpus languages")
    parser.add_argument("--sentences-per-file", type=int, default=1)
    parser.add_argument("--audioeval", action="store_true", help="also the audioeval samples")
    parser.add_argument("--audioeval-languages", default="", help="default: all in the wheel")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "asr-eval")
    parser.add_argument("--json-out", type=Path)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from serve_app.config import resolve_models_dir

    model_dir = args.model_dir or resolve_models_dir(None) / "whisper-base"
    tmp = args.cache / "espeak"
    tmp.mkdir(parents=True, exist_ok=True)
    languages = [x for x in args.languages.split(",") if x]
    samples = espeak_samples(languages, args.sentences_per_file, tmp) if languages else []
    if args.audioeval:
        chosen = [x for x in args.audioeval_languages.split(",") if x] or None
        samples += audioeval_samples(args.cache / "wheels", chosen)
    library = LibraryReference(model_dir, args.compute_type)  # detects the language itself
    rows = evaluate(
        samples,
        lambda audio: service_transcribe(args.url, args.model, audio),
        library.transcribe,
    )
    print(render(rows))
    if args.json_out:
        args.json_out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
