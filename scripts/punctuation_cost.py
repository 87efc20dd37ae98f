"""Throughput cost of the punctuation stage: RTFx with and without it, at concurrency C.

Deploys ONE app (its own local Ray cluster and Serve instance) with a FunASR Paraformer
and a CT-Transformer punctuation stage, both random-weight, architecture-faithful folders
from ``serve_app.tools.random_models`` (no hub here), speaks an espeak-ng corpus, and
sends every file from C concurrent clients, alternating runs with ``punctuate=false`` and
with the stage, so both see the same machine state. Prints RTFx (audio seconds per wall
second), p50/p95 latency per mode, and the cost. Random weights produce gibberish text of
realistic length (Paraformer's CIF fires ~ a token per 60-200 ms), which is what the
punctuation stage's cost depends on.

    python -m scripts.punctuation_cost --concurrency 16 --files 16 --repeats 2 \
        --recognizer paraformer-large --punctuation ct-punc-large

Short smoke run (tiny models): ``--recognizer paraformer-tiny --punctuation ct-punc-tiny
--files 4 --repeats 1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

from scripts.common.audio import sentence_files
from scripts.common.http import ab_rounds, percentile
from scripts.common.service import deploy_local, shutdown_local

APP_NAME = "punctuation_cost"


def app_config(models_dir: Path, recognizer: Path, punctuation: Path, threads: int) -> dict:
    replica = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}
    return {
        "models_dir": str(models_dir),
        "vad_deployment": {**replica, "max_ongoing_requests": 16},
        "ingress": {"deployment": {**replica, "max_ongoing_requests": 256}},
        "recognizers": [
            {
                "name": "paraformer",
                "backend": "funasr",
                "model": str(recognizer),
                "cpu_threads": threads,
                "batch": {
                    "max_batch_audio_s": 240,
                    "max_batch_items": 32,
                    "batch_wait_timeout_s": 0.05,
                    "max_forward_audio_s": 240,
                },
                "deployment": {**replica, "max_ongoing_requests": 128},
                "punctuation": {
                    "model": str(punctuation),
                    "cpu_threads": threads,
                    "deployment": {**replica, "max_ongoing_requests": 128},
                },
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--sentences-per-file", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="alternating run pairs")
    parser.add_argument("--recognizer", default="paraformer-large")
    parser.add_argument("--punctuation", default="ct-punc-large")
    parser.add_argument("--threads", type=int, default=1, help="model threads per replica")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    logging.getLogger("httpx").setLevel(logging.WARNING)
    from serve_app.config import resolve_models_dir
    from serve_app.tools.random_models import write_models

    work = Path(tempfile.mkdtemp(prefix="punc-cost-"))
    folders = write_models([args.recognizer, args.punctuation], work / "models")
    corpus = sentence_files(work, args.files, args.sentences_per_file)
    config = app_config(
        resolve_models_dir(None),
        folders[args.recognizer],
        folders[args.punctuation],
        args.threads,
    )
    forms = {"without": {"punctuate": "false"}, "with": {"punctuate": "true"}}
    try:
        url = deploy_local(config, name=APP_NAME)
        ab_rounds(url, corpus[:2], {"warm-up": forms["with"]}, rounds=1, concurrency=2)
        runs = ab_rounds(
            url, corpus, forms, rounds=args.repeats, concurrency=args.concurrency, alternate=False
        )
    finally:
        shutdown_local()
    summary = {}
    for mode in forms:
        mine = [run for _, label, run in runs if label == mode]
        audio_s = sum(r.audio_s for r in mine)
        wall_s = sum(r.wall_s for r in mine)
        summary[mode] = {
            "rtfx": audio_s / wall_s if wall_s else float("nan"),
            "p50_s": statistics.median(percentile(r.latencies, 50) or 0.0 for r in mine),
            "p95_s": max(percentile(r.latencies, 95) or 0.0 for r in mine),
            "errors": sum(len(r.errors) for r in mine),
            "audio_s": audio_s,
        }
    cost = 1 - summary["with"]["rtfx"] / summary["without"]["rtfx"]
    print(
        f"C={args.concurrency} files={args.files} repeats={args.repeats} "
        f"recognizer={args.recognizer} punctuation={args.punctuation} threads={args.threads}"
    )
    for mode, row in summary.items():
        print(
            f"  {mode:>7} punctuation: RTFx {row['rtfx']:.2f}  p50 {row['p50_s']:.2f} s  "
            f"p95 {row['p95_s']:.2f} s  errors {row['errors']}  audio {row['audio_s']:.0f} s"
        )
    print(f"  throughput cost of punctuation: {100 * cost:.1f} % of RTFx")
    if args.json:
        print(json.dumps({"summary": summary, "cost": cost}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
