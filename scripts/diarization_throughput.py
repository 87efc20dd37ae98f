"""Throughput cost of diarization under concurrent load: RTFx with and without it.

Deploys the default serving stack (FSMN-VAD + Whisper tiny.en int8 on CPU, as
``ray_configs/serve.yaml``) plus the speaker stage (the real GE2E encoder), or uses a
running one (``--url``), makes ``--files`` two-talker espeak-ng conversations
(``tests/speakers/conversations.py``) and sends them all from ``--concurrency`` clients,
alternating rounds without and with ``diarize=true`` (so drift of a shared machine hits
both alike). Prints per round the wall time and RTFx (audio seconds per wall second), and
the median cost of diarization: (wall with - wall without) / wall without.

    python scripts/diarization_throughput.py [--concurrency 16] [--files 16] [--rounds 2]
        [--turns N] [--url http://127.0.0.1:8000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.speakers.conversations import make_conversation  # noqa: E402

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


def start_local(args: argparse.Namespace) -> str:
    import ray
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.online.app import build_app

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    config = AppConfig.model_validate(
        app_config(args.models_dir, args.cpu_threads, args.speaker_threads)
    )
    serve.run(build_app(config), name=APP, route_prefix="/", blocking=False)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            return f"http://127.0.0.1:{port}"
        time.sleep(1)
    raise TimeoutError("the app did not start in 600 s")


def wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def run_round(url: str, files: list[bytes], concurrency: int, diarize: bool) -> float:
    gate = asyncio.Semaphore(concurrency)
    data = {
        "response_format": "verbose_json",
        "cache": "false",  # rounds repeat the files: every one must be recognized
        **({"diarize": "true"} if diarize else {}),
    }

    async def one(client: httpx.AsyncClient, body: bytes) -> None:
        async with gate:
            resp = await client.post(
                "/v1/audio/transcriptions",
                files={"file": ("c.wav", body, "audio/wav")},
                data=data,
            )
            resp.raise_for_status()
            if diarize and not resp.json().get("speakers"):
                raise RuntimeError("a diarized answer without speakers")

    async with httpx.AsyncClient(base_url=url, timeout=1800) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, body) for body in files))
        return time.perf_counter() - started


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
    files = [wav_bytes(c.samples) for c in conversations]
    audio_s = sum(c.duration_s for c in conversations)
    print(f"# {args.files} conversations, {audio_s:.0f} s of audio, C = {args.concurrency}")
    url = args.url or start_local(args)
    asyncio.run(run_round(url, files[:2], 2, True))  # warm both paths
    rows = []
    for round_index in range(args.rounds):
        for diarize in (False, True) if round_index % 2 == 0 else (True, False):
            wall_s = asyncio.run(run_round(url, files, args.concurrency, diarize))
            rows.append({"round": round_index, "diarize": diarize, "wall_s": wall_s})
            print(
                f"round {round_index} diarize={diarize!s:5} wall {wall_s:7.1f} s  "
                f"RTFx {audio_s / wall_s:6.2f}"
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
                    "command": " ".join(["scripts/diarization_throughput.py", *sys.argv[1:]]),
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
