"""Load generator: RTFx, latency percentiles and batch sizes at a given concurrency.

Sends each audio file of a corpus to ``/v1/audio/transcriptions`` from C concurrent
clients (bounded: every file once per repeat, then it stops), and prints

- RTFx: seconds of audio transcribed per wall-clock second,
- p50/p95/p99 request latency,
- the recognizer's dynamic batch-size distribution over the run (from ``/v1/stats``),
- padding efficiency (real audio / padded audio),
- WER against the corpus's reference texts when they are known.

With no ``--audio-dir`` it speaks a corpus with espeak-ng (known text, so WER is real).

    python scripts/loadgen.py --url http://127.0.0.1:8000 --concurrency 16 --model whisper-tiny.en
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve_app.core.evaluation import word_error_rate
from tests.speech import SENTENCES, synthesize_wav


def make_corpus(out_dir: Path, num_files: int, sentences_per_file: int) -> list[tuple[Path, str]]:
    """Files of several sentences with pauses between them (so VAD cuts several segments)."""
    corpus = []
    for i in range(num_files):
        texts = [
            SENTENCES[(i * sentences_per_file + j) % len(SENTENCES)]
            for j in range(sentences_per_file)
        ]
        parts = []
        for j, text in enumerate(texts):
            part = synthesize_wav(text, out_dir / f"f{i}_{j}.wav", speed_wpm=140 + 10 * (i % 4))
            parts.append(str(part))
            parts.append(str(_silence(out_dir, 0.6 + 0.2 * (j % 3))))
        path = out_dir / f"file{i:03d}.wav"
        subprocess.run(["sox", *parts, str(path)], check=True)
        corpus.append((path, " ".join(texts)))
    return corpus


def _silence(out_dir: Path, seconds: float) -> Path:
    path = out_dir / f"sil_{seconds:.1f}.wav"
    if not path.exists():
        subprocess.run(
            [
                "sox",
                "-n",
                "-r",
                "16000",
                "-c",
                "1",
                "-b",
                "16",
                str(path),
                "trim",
                "0",
                str(seconds),
            ],
            check=True,
        )
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run_load(url, corpus, *, concurrency, model, repeats, timeout_s):
    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(repeats):
        for item in corpus:
            queue.put_nowait(item)
    latencies, refs, hyps, errors = [], [], [], []
    audio_s = 0.0

    async def client(http: httpx.AsyncClient):
        nonlocal audio_s
        while True:
            try:
                path, ref = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            files = {"file": (path.name, path.read_bytes(), "audio/wav")}
            resp = await http.post(
                f"{url}/v1/audio/transcriptions",
                files=files,
                data={"model": model, "cache": "false"},  # measure the pipeline, not the cache
            )
            latencies.append(time.perf_counter() - started)
            if resp.status_code != 200:
                errors.append(f"{resp.status_code} {resp.text[:200]}")
                continue
            audio_s += float(resp.headers.get("x-audio-duration-s", 0))
            refs.append(ref)
            hyps.append(resp.json()["text"])

    async with httpx.AsyncClient(timeout=timeout_s) as http:
        before = (await http.get(f"{url}/v1/stats")).json()
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall_s = time.perf_counter() - started
        after = (await http.get(f"{url}/v1/stats")).json()
    return {
        "wall_s": wall_s,
        "audio_s": audio_s,
        "latencies": latencies,
        "refs": refs,
        "hyps": hyps,
        "errors": errors,
        "before": before,
        "after": after,
    }


def stats_delta(before: dict, after: dict, model: str) -> dict:
    b, a = before.get(model, {}), after.get(model, {})
    counts = {}
    for size, n in a.get("batch_size_counts", {}).items():
        diff = n - b.get("batch_size_counts", {}).get(size, 0)
        if diff:
            counts[int(size)] = diff
    real = a.get("audio_s", 0) - b.get("audio_s", 0)
    padded = a.get("padded_s", 0) - b.get("padded_s", 0)
    return {
        "batch_size_counts": dict(sorted(counts.items())),
        "padding_efficiency": (real / padded) if padded else float("nan"),
        "recognizer_busy_s": a.get("busy_s", 0) - b.get("busy_s", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Load generator for /v1/audio/transcriptions")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="served model name (default: server's)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--files", type=int, default=16, help="generated corpus size")
    parser.add_argument("--sentences-per-file", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--audio-dir", type=Path, help="use these audio files instead (no WER)")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print one JSON line too")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.audio_dir:
            corpus = [(p, "") for p in sorted(args.audio_dir.iterdir()) if p.is_file()]
        else:
            corpus = make_corpus(Path(tmp), args.files, args.sentences_per_file)
        corpus_s = sum(sf.info(str(p)).duration for p, _ in corpus)
        model = args.model
        if model is None:
            model = httpx.get(f"{args.url}/v1/models").json()["data"][0]["id"]
        result = asyncio.run(
            run_load(
                args.url,
                corpus,
                concurrency=args.concurrency,
                model=model,
                repeats=args.repeats,
                timeout_s=args.timeout_s,
            )
        )
    lat = result["latencies"]
    canonical = model if model in result["after"] else next(iter(result["after"]), model)
    delta = stats_delta(result["before"], result["after"], canonical)
    summary = {
        "model": model,
        "concurrency": args.concurrency,
        "requests": len(lat),
        "errors": len(result["errors"]),
        "audio_s": round(result["audio_s"], 2),
        "wall_s": round(result["wall_s"], 2),
        "rtfx": round(result["audio_s"] / result["wall_s"], 2) if result["wall_s"] else None,
        "latency_p50_s": round(percentile(lat, 50), 3),
        "latency_p95_s": round(percentile(lat, 95), 3),
        "latency_p99_s": round(percentile(lat, 99), 3),
        "latency_mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "batch_size_counts": delta["batch_size_counts"],
        "padding_efficiency": round(delta["padding_efficiency"], 3),
        "wer": round(word_error_rate(result["refs"], result["hyps"]), 4)
        if any(result["refs"])
        else None,
        "corpus_files": len(corpus),
        "corpus_audio_s": round(corpus_s, 1),
    }
    print(
        f"model={summary['model']} concurrency={summary['concurrency']} "
        f"requests={summary['requests']} errors={summary['errors']}"
    )
    print(f"audio={summary['audio_s']} s  wall={summary['wall_s']} s  RTFx={summary['rtfx']}")
    print(
        f"latency p50={summary['latency_p50_s']} s  p95={summary['latency_p95_s']} s  "
        f"p99={summary['latency_p99_s']} s"
    )
    print(
        f"batch sizes (items: count) {summary['batch_size_counts']}  "
        f"padding efficiency={summary['padding_efficiency']}"
    )
    if summary["wer"] is not None:
        print(f"WER={summary['wer']:.2%}")
    for err in result["errors"][:5]:
        print("error:", err)
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
