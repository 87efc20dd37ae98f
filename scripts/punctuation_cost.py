"""Throughput cost of the punctuation stage: RTFx with and without it, at concurrency C.

Deploys ONE app (its own local Ray cluster and Serve instance) with a FunASR Paraformer
and a CT-Transformer punctuation stage, both random-weight, architecture-faithful folders
from scripts/make_random_funasr_models.py (no hub here), speaks an espeak-ng corpus, and
sends every file from C concurrent clients, alternating runs with ``punctuate=false`` and
with the stage, so both see the same machine state. Prints RTFx (audio seconds per wall
second), p50/p95 latency per mode, and the cost. Random weights produce gibberish text of
realistic length (Paraformer's CIF fires ~ a token per 60-200 ms), which is what the
punctuation stage's cost depends on.

    python scripts/punctuation_cost.py --concurrency 16 --files 16 --repeats 2 \
        --recognizer paraformer-large --punctuation ct-punc-large

Short smoke run (tiny models): ``--recognizer paraformer-tiny --punctuation ct-punc-tiny
--files 4 --repeats 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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


async def run_mode(url: str, corpus: list[Path], *, concurrency: int, punctuate: bool) -> dict:
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for path in corpus:
        queue.put_nowait(path)
    latencies: list[float] = []
    errors: list[str] = []
    audio_s = 0.0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal audio_s
        while not queue.empty():
            path = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post(
                f"{url}/v1/audio/transcriptions",
                files={"file": (path.name, path.read_bytes(), "audio/wav")},
                data={"punctuate": "true" if punctuate else "false", "cache": "false"},
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:200]}")
                continue
            audio_s += float(response.headers.get("x-audio-duration-s", 0))

    async with httpx.AsyncClient(timeout=900) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall_s = time.perf_counter() - started
    latencies.sort()
    return {
        "audio_s": audio_s,
        "wall_s": wall_s,
        "p50_s": latencies[len(latencies) // 2] if latencies else float("nan"),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        if latencies
        else float("nan"),
        "errors": errors,
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

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import make_random_funasr_models
    import ray
    from loadgen import make_corpus
    from ray import serve

    from serve_app.config import AppConfig, resolve_models_dir
    from serve_app.online.app import build_app

    work = Path(tempfile.mkdtemp(prefix="punc-cost-"))
    folders = make_random_funasr_models.write_models(
        [args.recognizer, args.punctuation], work / "models"
    )
    corpus = [p for p, _ in make_corpus(work, args.files, args.sentences_per_file)]
    config = app_config(
        resolve_models_dir(None),
        folders[args.recognizer],
        folders[args.punctuation],
        args.threads,
    )
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = 8123
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(AppConfig.model_validate(config)), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    results: dict[str, list[dict]] = {"without": [], "with": []}
    try:
        asyncio.run(run_mode(url, corpus[:2], concurrency=2, punctuate=True))  # warm-up
        for _ in range(args.repeats):
            for mode in ("without", "with"):
                results[mode].append(
                    asyncio.run(
                        run_mode(
                            url,
                            corpus,
                            concurrency=args.concurrency,
                            punctuate=mode == "with",
                        )
                    )
                )
    finally:
        serve.shutdown()
        ray.shutdown()
    summary = {}
    for mode, runs in results.items():
        audio_s = sum(r["audio_s"] for r in runs)
        wall_s = sum(r["wall_s"] for r in runs)
        summary[mode] = {
            "rtfx": audio_s / wall_s if wall_s else float("nan"),
            "p50_s": sorted(r["p50_s"] for r in runs)[len(runs) // 2],
            "p95_s": max(r["p95_s"] for r in runs),
            "errors": sum(len(r["errors"]) for r in runs),
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
