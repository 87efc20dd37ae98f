"""Diarization error rate of the speaker pipeline on espeak-ng conversations, real weights.

Per speaker count, ``--files`` conversations (:mod:`scripts.common.conversations`) of one
voice set (``--set``: ``dev``, ``tune``, ``heldout``, disjoint; ``probe``: the held-out
3-talker probe, two male American variants and a female British voice, 0.7 s pauses),
optionally with overlapping turns (``--overlap``), are diarized as the service does:
speech spans from the VAD (``--vad fsmn``: raw FSMN spans;
``service``: its segments cut at pauses; ``segments``: uncut; ``oracle``: the reference
turns, which isolates embedding and clustering), ``embedding_windows``, the GE2E encoder
(resemblyzer 0.1.4's weights) through ``BatchedEmbedder``, clustering and turns. DER from
``pyannote.metrics`` (collar 0, and 0.5 = 0.25 s either side, as NIST's md-eval; overlap
scored), without and with ``num_speakers`` given; the count is right when the speakers
found equal the reference's. ``--sweep KEY=V1,V2`` compares values of one
``DiarizationSettings`` knob (tune on another set than you report).

    python -m scripts.diarization_eval [--speakers 2,4] [--files 10] [--seed 0]
        [--set dev|tune|heldout|probe] [--overlap 0.3]
        [--vad fsmn|service|segments|oracle] [--sweep min_neighbour_share=0.05,0.1]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from scripts.common.conversations import (
    VOICE_SETS,
    Conversation,
    make_conversation,
    reference_annotation,
)
from serve_app.core import diarization as dz
from serve_app.core.types import EmbeddingJob
from serve_app.speakers.base import BatchedEmbedder

print = functools.partial(print, flush=True)  # progress as it comes

COLLARS_S = (0.0, 0.5)  # pyannote's collar: the total width around each boundary


@dataclass
class FileCase:
    conversation: Conversation
    spans_s: list[tuple[float, float]]
    windows: list[dz.TimeWindow]
    embeddings: np.ndarray


def speech_spans_s(conversation: Conversation, vad: Any, mode: str) -> list[tuple[float, float]]:
    """The spans ``--vad mode`` diarizes (``vad`` is None for ``oracle``)."""
    if vad is None:
        return [(t.start_s, t.end_s) for t in conversation.turns]
    if mode == "fsmn":
        return [(a / 1000, b / 1000) for a, b in vad.speech_spans_ms(conversation.samples)]
    # What the service diarizes: the VAD deployment's segments (spans merged across short
    # gaps, padded, long ones cut) cut at their pauses, as serve_app.core.pipeline does
    # ("segments": without the cut).
    segments = [(s.start_ms, s.end_ms) for s in vad.segments(conversation.samples)]
    if mode == "segments":
        return [(a / 1000, b / 1000) for a, b in segments]
    return dz.speech_spans_s(conversation.samples, segments)


def hypothesis_annotation(diarization: dz.Diarization):
    from pyannote.core import Annotation, Segment

    hypothesis = Annotation()
    for turn in diarization.turns:
        hypothesis[Segment(turn.start_s, turn.end_s)] = turn.speaker
    return hypothesis


def score(cases: list[FileCase], settings: dz.DiarizationSettings, *, given: bool) -> dict:
    """Aggregate DER (per collar), its components and speaker-count accuracy."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metrics = {c: DiarizationErrorRate(collar=c, skip_overlap=False) for c in COLLARS_S}
    parts = {c: {"confusion": 0.0, "missed detection": 0.0, "false alarm": 0.0, "total": 0.0}
             for c in COLLARS_S}  # fmt: skip
    right_count = 0
    for case in cases:
        options = dz.DiarizationOptions(
            num_speakers=case.conversation.num_speakers if given else None
        )
        result = dz.turns_from_embeddings(
            case.windows, case.embeddings, case.spans_s, options, settings
        )
        right_count += len(result.talk_time_s) == case.conversation.num_speakers
        reference = reference_annotation(case.conversation)
        hypothesis = hypothesis_annotation(result)
        for collar, metric in metrics.items():
            detail = metric(reference, hypothesis, detailed=True)
            for key in parts[collar]:
                parts[collar][key] += detail[key]
    out: dict[str, Any] = {"files": len(cases), "count_right": right_count / max(len(cases), 1)}
    for collar in COLLARS_S:
        total = parts[collar]["total"] or 1.0
        out[f"der_collar{collar}"] = abs(metrics[collar])
        out[f"confusion_collar{collar}"] = parts[collar]["confusion"] / total
        out[f"missed_collar{collar}"] = parts[collar]["missed detection"] / total
        out[f"false_alarm_collar{collar}"] = parts[collar]["false alarm"] / total
    return out


def build_cases(
    num_speakers: int,
    files: int,
    seed: int,
    tmp_dir: Path,
    vad: Any,
    embedder: BatchedEmbedder,
    settings: dz.DiarizationSettings,
    timings: dict[str, float],
    *,
    mode: str = "fsmn",
    shape: dict[str, Any] | None = None,
) -> list[FileCase]:
    """``shape``: keyword arguments of ``make_conversation`` (voices, pauses, overlaps)."""
    cases = []
    for index in range(files):
        conversation = make_conversation(num_speakers, seed + index, tmp_dir, **(shape or {}))
        started = time.perf_counter()
        spans = speech_spans_s(conversation, vad, mode)
        timings["vad_s"] += time.perf_counter() - started
        windows = dz.embedding_windows(spans, window_s=settings.window_s, hop_s=settings.hop_s)
        jobs = [EmbeddingJob(a) for a in dz.window_audio(conversation.samples, windows)]
        started = time.perf_counter()
        results = embedder.embed_batch(jobs)
        timings["embed_s"] += time.perf_counter() - started
        timings["audio_s"] += conversation.duration_s
        timings["windows"] += len(jobs)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise errors[0]
        embeddings = np.stack(results) if results else np.zeros((0, 256), np.float32)
        cases.append(FileCase(conversation, spans, windows, embeddings))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", default="2,4", help="comma-separated speaker counts")
    parser.add_argument("--files", type=int, default=10, help="conversations per count")
    parser.add_argument("--seed", type=int, default=0, help="first conversation seed")
    parser.add_argument(
        "--vad",
        choices=["fsmn", "service", "segments", "oracle"],
        default="fsmn",
        help="fsmn: raw FSMN-VAD spans; service: what the service diarizes (its VAD "
        "segments cut at pauses); segments: those segments uncut; oracle: the reference turns",
    )
    parser.add_argument("--set", default="dev", choices=[*VOICE_SETS, "probe"], help="voices")
    parser.add_argument("--overlap", type=float, default=0.0, help="share of overlapping turns")
    parser.add_argument("--sweep", default=None, help="KEY=V1,V2: DiarizationSettings values")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    from serve_app.config import resolve_models_dir
    from serve_app.speakers.ge2e import Ge2eEmbedder

    models_dir = args.models_dir or resolve_models_dir(None)
    settings = dz.DiarizationSettings()
    knob, values = (args.sweep or "min_neighbour_share=").split("=")
    sweep = [float(v) for v in values.split(",") if v] or [getattr(settings, knob)]
    shape: dict[str, Any] = {"voices": VOICE_SETS.get(args.set), "overlap_share": args.overlap}
    if args.set == "probe":  # the held-out probe: always these three talkers
        shape = {"voices": VOICE_SETS["heldout"][:3], "pause_s": (0.7, 0.7)}
    embedder = BatchedEmbedder(
        Ge2eEmbedder.from_models_dir(models_dir), max_forward_audio_s=96.0, max_batch_items=64
    )
    embedder.warmup()
    vad = None
    if args.vad in ("fsmn", "service", "segments"):
        from serve_app.config import VadSettings
        from serve_app.vad.detectors import Vad

        vad = Vad(VadSettings(), models_dir=models_dir)
        vad.warmup()

    timings = {"vad_s": 0.0, "embed_s": 0.0, "audio_s": 0.0, "windows": 0.0}
    report: dict[str, Any] = {
        "command": " ".join(["python -m scripts.diarization_eval", *(argv or sys.argv[1:])]),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "encoder": "ge2e (resemblyzer 0.1.4 weights)",
        "vad": args.vad,
        "set": args.set,
        "overlap_share": args.overlap,
        "settings": settings.__dict__,
        "results": [],
    }
    print(
        f"# encoder ge2e, set {args.set}, overlap {args.overlap}, vad {args.vad}, "
        f"window {settings.window_s} s / hop {settings.hop_s} s"
    )
    print(
        f"{'spk':>3} {'files':>5} {knob[:8]:>8} {'count':>6} | {'DER':>6} {'conf':>6} "
        f"{'miss':>6} {'FA':>6} | {'DER.25':>6} | {'DER(n)':>6} {'DER(n).25':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for num_speakers in [int(s) for s in args.speakers.split(",")]:
            cases = build_cases(
                num_speakers,
                args.files,
                args.seed,
                Path(tmp),
                vad,
                embedder,
                settings,
                timings,
                mode=args.vad,
                shape=shape,
            )
            for value in sweep:
                tuned = settings.model_copy(update={knob: value})
                blind = score(cases, tuned, given=False)
                given = score(cases, tuned, given=True)
                report["results"].append(
                    {"speakers": num_speakers, knob: value, "count_not_given": blind,
                     "count_given": given}
                )  # fmt: skip
                print(
                    f"{num_speakers:>3} {blind['files']:>5} {value:>8.3g} "
                    f"{blind['count_right']:>6.0%} | {blind['der_collar0.0']:>6.1%} "
                    f"{blind['confusion_collar0.0']:>6.1%} {blind['missed_collar0.0']:>6.1%} "
                    f"{blind['false_alarm_collar0.0']:>6.1%} | {blind['der_collar0.5']:>6.1%} | "
                    f"{given['der_collar0.0']:>6.1%} {given['der_collar0.5']:>9.1%}"
                )
    rtfx = timings["audio_s"] / max(timings["embed_s"], 1e-9)
    report["timings"] = {**timings, "embed_rtfx": rtfx}
    print(
        f"# {timings['audio_s']:.0f} s of audio, {timings['windows']:.0f} windows: "
        f"GE2E embedding {timings['embed_s']:.1f} s (RTFx {rtfx:.0f}), VAD {timings['vad_s']:.1f} s"
    )
    print(
        "# DER/conf/miss/FA: count not given, collar 0; DER.25: +-0.25 s collar; "
        "DER(n): num_speakers given"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
