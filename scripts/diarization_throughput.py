"""Throughput cost of diarization under concurrent load: RTFx with and without it.

Deploys the default serving stack (FSMN-VAD + Whisper tiny.en int8 on CPU, as
``ray_configs/serve.yaml``) plus the speaker stage (the real GE2E encoder), or uses a
running one (``--url``), makes ``--files`` two-talker espeak-ng conversations
(:mod:`scripts.common.conversations`) and sends them all from ``--concurrency`` clients,
alternating rounds without and with ``diarize=true`` (so drift of a shared machine hits
both alike). Prints per round the wall time and RTFx (audio seconds per wall second), and
the median cost of diarization: (wall with - wall without) / wall without.

    python -m scripts.diarization_throughput [--concurrency 16] [--files 16] [--rounds 2]
        [--turns N] [--url http://127.0.0.1:8000] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from scripts.common.audio import spoken
from scripts.common.conversations import make_conversation
from scripts.common.http import ab_rounds
from scripts.common.service import deploy_local, shutdown_local

print = functools.partial(print, flush=True)
APP = "diarization_throughput"


def app_config(models_dir: str | None, threads: int, speaker_threads: int) -> dict:
    return {
        "models_dir": models_dir,
        # CPU reservations as ray_configs/serve.yaml (+ 0.25 for the speaker stage), so the
        # app starts on a 2-core node.
        "vad_deployment": {
            "num_replicas": 1,
            "max_ongoing_requests": 32,
            "ray_actor_options": {"num_cpus": 0.5},
        },
        "ingress": {
            "default_model": "whisper-tiny.en",
            "deployment": {
                "num_replicas": 1,
                "max_ongoing_requests": 128,
                "ray_actor_options": {"num_cpus": 0.25},
            },
        },
        "speakers": {
            "backend": "ge2e",
            "cpu_threads": speaker_threads,
            "deployment": {
                "num_replicas": 1,
                "max_ongoing_requests": 1024,
                "ray_actor_options": {"num_cpus": 0.25},
            },
        },
        "recognizers": [
            {
                "name": "whisper-tiny.en",
                "backend": "whisper",
                "model": "whisper-tiny.en",
                "precision": "int8",
                "language": "en",
                "cpu_threads": threads,
                # All files are sent at once on purpose: admission control must not refuse
                # them (a loaded 2-core box drains a few audio seconds per second).
                "max_queue_wait_s": 3600,
                "batch": {
                    "max_batch_audio_s": 480,
                    "max_batch_items": 16,
                    "batch_wait_timeout_s": 0.05,
                    "max_forward_audio_s": 480,
                },
                "deployment": {
                    "num_replicas": 1,
                    "max_ongoing_requests": 64,
                    "ray_actor_options": {"num_cpus": 1},
                },
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running service (with speakers:)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode")
    parser.add_argument("--seed", type=int, default=300)
    parser.add_argument("--turns", type=int, default=None, help="turns per conversation (>= 4)")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--cpu-threads", type=int, default=2, help="Whisper's threads")
    parser.add_argument("--speaker-threads", type=int, default=1, help="GE2E's threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        conversations = [
            make_conversation(2, args.seed + i, Path(tmp), num_turns=args.turns)
            for i in range(args.files)
        ]
    files = [spoken(f"c{i}.wav", c.samples) for i, c in enumerate(conversations)]
    audio_s = sum(c.duration_s for c in conversations)
    print(f"# {args.files} conversations, {audio_s:.0f} s of audio, C = {args.concurrency}")
    # Every file recognized in every round (cache=false); verbose_json carries the speakers.
    forms = {
        "plain": {"response_format": "verbose_json"},
        "diarized": {"response_format": "verbose_json", "diarize": "true"},
    }
    try:
        url = args.url or deploy_local(
            app_config(args.models_dir, args.cpu_threads, args.speaker_threads), name=APP
        )
        warm = httpx.post(
            url + "/v1/audio/transcriptions",
            files={"file": ("c.wav", files[0].wav, "audio/wav")},
            data={**forms["diarized"], "cache": "false"},
            timeout=1800,
        )  # warms both paths' models
        warm.raise_for_status()
        if not warm.json().get("speakers"):
            raise RuntimeError("a diarized answer without speakers")
        runs = ab_rounds(url, files, forms, rounds=args.rounds, concurrency=args.concurrency)
    finally:
        if not args.url:
            shutdown_local()
    rows = []
    for round_index, label, run in runs:
        diarize = label == "diarized"
        rows.append({"round": round_index, "diarize": diarize, "wall_s": run.wall_s})
        print(
            f"round {round_index} diarize={diarize!s:5} wall {run.wall_s:7.1f} s  "
            f"RTFx {audio_s / run.wall_s:6.2f}"
        )
    plain = statistics.median(r["wall_s"] for r in rows if not r["diarize"])
    diarized = statistics.median(r["wall_s"] for r in rows if r["diarize"])
    cost = (diarized - plain) / plain
    print(
        f"median wall: without {plain:.1f} s (RTFx {audio_s / plain:.2f}), with {diarized:.1f} s "
        f"(RTFx {audio_s / diarized:.2f}); diarization adds {100 * cost:+.1f} % wall time"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join(
                        ["python -m scripts.diarization_throughput", *sys.argv[1:]]
                    ),
                    "audio_s": audio_s,
                    "concurrency": args.concurrency,
                    "rounds": rows,
                    "cost": cost,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
