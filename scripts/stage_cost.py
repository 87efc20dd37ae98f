"""What an optional stage costs under concurrent load: RTFx without and with it.

Deploys an app with the stage on its own local Ray cluster (or uses a running service,
``--url``) and sends every file of a corpus from C clients, in rounds without and with the
stage (``punctuate`` / ``diarize``), every other round in reverse order so the drift of a
shared machine hits both alike. Prints per round the wall time and RTFx, per mode RTFx and
p50/p95 latency, and what the stage adds to the median wall time.

    python -m scripts.stage_cost --stage punctuation --recognizer paraformer-large \
        --punctuation ct-punc-large --files 16 --rounds 2 --concurrency 16
    python -m scripts.stage_cost --stage diarization --turns 4 [--url http://127.0.0.1:8000]

``punctuation``: a FunASR Paraformer and CT-Transformer, random-weight folders
(:mod:`serve_app.tools.random_models`; their gibberish has a realistic length, which is what
the stage's cost depends on), on files of espeak-ng sentences. Smoke size: ``--recognizer
paraformer-tiny --punctuation ct-punc-tiny --files 4 --rounds 1``. ``diarization``:
FSMN-VAD + Whisper tiny.en int8 (as ``ray_configs/serve.yaml``) and the real GE2E encoder,
on two-talker espeak-ng conversations (:mod:`scripts.common.conversations`).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from scripts.common.audio import sentence_files, spoken
from scripts.common.conversations import make_conversation
from scripts.common.http import ab_rounds, percentile
from scripts.common.service import deploy_local, shutdown_local

BATCH = {"max_batch_items": 32, "batch_wait_timeout_s": 0.05}


def _deployment(cpus: float, ongoing: int) -> dict:
    return {"num_replicas": 1, "max_ongoing_requests": ongoing,
            "ray_actor_options": {"num_cpus": cpus}}  # fmt: skip


def punctuation_app(models_dir: str | None, recognizer: Path, punctuation: Path, threads: int):
    """One FunASR recognizer with a punctuation stage, every replica at 0 CPUs."""
    return {
        "models_dir": models_dir,
        "vad_deployment": _deployment(0, 16),
        "ingress": {"deployment": _deployment(0, 256)},
        "recognizers": [{
            "name": "paraformer", "backend": "funasr", "model": str(recognizer),
            "cpu_threads": threads, "deployment": _deployment(0, 128),
            "batch": {**BATCH, "max_batch_audio_s": 240, "max_forward_audio_s": 240},
            "punctuation": {"model": str(punctuation), "cpu_threads": threads,
                            "deployment": _deployment(0, 128)},
        }],
    }  # fmt: skip


def diarization_app(models_dir: str | None, threads: int, speaker_threads: int) -> dict:
    """ray_configs/serve.yaml's stack (its CPU reservations, + 0.25 for GE2E: it starts on
    a 2-core node) with the speaker stage. Admission control admits every file sent at once
    (a loaded 2-core box drains a few audio seconds per second)."""
    return {
        "models_dir": models_dir,
        "vad_deployment": _deployment(0.5, 32),
        "ingress": {"default_model": "whisper-tiny.en", "deployment": _deployment(0.25, 128)},
        "speakers": {"backend": "ge2e", "cpu_threads": speaker_threads,
                     "deployment": _deployment(0.25, 1024)},
        "recognizers": [{
            "name": "whisper-tiny.en", "backend": "whisper", "model": "whisper-tiny.en",
            "precision": "int8", "language": "en", "cpu_threads": threads,
            "max_queue_wait_s": 3600, "deployment": _deployment(1, 64),
            "batch": {**BATCH, "max_batch_items": 16, "max_batch_audio_s": 480,
                      "max_forward_audio_s": 480},
        }],
    }  # fmt: skip


def corpus_and_app(args: argparse.Namespace, tmp: Path) -> tuple[list, dict | None]:
    if args.stage == "diarization":
        conversations = [
            make_conversation(2, args.seed + i, tmp, num_turns=args.turns)
            for i in range(args.files)
        ]
        files = [spoken(f"c{i}.wav", c.samples) for i, c in enumerate(conversations)]
        app = diarization_app(args.models_dir, args.cpu_threads, args.speaker_threads)
        return files, None if args.url else app
    files = sentence_files(tmp, args.files, args.sentences_per_file)
    if args.url:
        return files, None
    from serve_app.tools.random_models import write_models

    folders = write_models([args.recognizer, args.punctuation], tmp / "models")
    app = punctuation_app(
        args.models_dir, folders[args.recognizer], folders[args.punctuation], args.cpu_threads
    )
    return files, app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("diarization", "punctuation"), default="diarization")
    parser.add_argument("--url", default=None, help="a running service with the stage")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rounds", "--repeats", type=int, default=2, help="rounds per mode")
    parser.add_argument("--seed", type=int, default=300, help="diarization: conversation seed")
    parser.add_argument("--turns", type=int, default=None, help="diarization: turns (>= 4)")
    parser.add_argument("--sentences-per-file", type=int, default=3, help="punctuation")
    parser.add_argument("--recognizer", default="paraformer-large", help="punctuation")
    parser.add_argument("--punctuation", default="ct-punc-large", help="punctuation")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--cpu-threads", "--threads", type=int, default=None,
                        help="recognizer and punctuation threads (default 2 / 1)")  # fmt: skip
    parser.add_argument("--speaker-threads", type=int, default=1, help="GE2E's threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    diarize = args.stage == "diarization"
    args.cpu_threads = args.cpu_threads or (2 if diarize else 1)
    # verbose_json carries the speakers; every file recognized in every round (cache=false)
    flag, base = ("diarize", {"response_format": "verbose_json"}) if diarize else ("punctuate", {})
    forms = {"without": {**base, flag: "false"}, "with": {**base, flag: "true"}}

    with tempfile.TemporaryDirectory() as tmp:
        files, app = corpus_and_app(args, Path(tmp))
        audio_s = sum(f.duration_s for f in files)
        print(f"# {args.stage}: {len(files)} files, {audio_s:.0f} s, C = {args.concurrency}")
        try:
            url = args.url or deploy_local(app, name=f"{args.stage}_cost")
            ab_rounds(url, files[:2], {"warm-up": forms["with"]}, rounds=1, concurrency=2)
            runs = ab_rounds(url, files, forms, rounds=args.rounds, concurrency=args.concurrency)
        finally:
            if app is not None:
                shutdown_local()
    walls: dict[str, list[float]] = {"without": [], "with": []}
    for index, label, run in runs:
        walls[label].append(run.wall_s)
        p50, p95 = (percentile(run.latencies, q, 0.0) for q in (50, 95))
        print(
            f"round {index} {label:>7} {args.stage}: wall {run.wall_s:7.1f} s  "
            f"RTFx {audio_s / run.wall_s:6.2f}  p50 {p50:.2f} s  p95 {p95:.2f} s"
        )
    plain, staged = (statistics.median(walls[mode]) for mode in ("without", "with"))
    cost = staged / plain - 1
    print(
        f"median wall: without {plain:.1f} s (RTFx {audio_s / plain:.2f}), with {staged:.1f} s "
        f"(RTFx {audio_s / staged:.2f}); {args.stage} adds {100 * cost:+.1f} % wall time"
    )
    if args.json:
        command = " ".join(["python -m scripts.stage_cost", *(argv or sys.argv[1:])])
        report = {"command": command, "audio_s": audio_s, "wall_s": walls, "cost": cost}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
