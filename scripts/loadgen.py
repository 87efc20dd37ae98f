"""Load generator: RTFx, latency percentiles and batch sizes at a given concurrency.

Each file of a corpus goes once (per repeat) to the transcriptions route from C clients;
printed: RTFx (audio s per wall s), p50/p95/p99 latency, the recognizer's batch sizes and
padding efficiency over the run (``/v1/stats``), and the WER where the text is known (the
default corpus is spoken by espeak-ng; ``--audio-dir`` sends files as they are).

    python -m scripts.loadgen --url http://127.0.0.1:8000 --concurrency 16 --model whisper-tiny.en
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

import httpx

from scripts.common.audio import read_files, sentence_files
from scripts.common.http import percentile, run_closed, stats_delta
from serve_app.core.evaluation import word_error_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="served model name (default: server's)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--files", type=int, default=16, help="generated corpus size")
    parser.add_argument("--sentences-per-file", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--audio-dir", type=Path, help="use these audio files instead (no WER)")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print one JSON line too")
    args = parser.parse_args(argv)

    if args.audio_dir:
        corpus = read_files(sorted(p for p in args.audio_dir.iterdir() if p.is_file()))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = sentence_files(Path(tmp), args.files, args.sentences_per_file)
    model = args.model or httpx.get(f"{args.url}/v1/models").json()["data"][0]["id"]
    run = asyncio.run(
        run_closed(
            args.url,
            corpus,
            concurrency=args.concurrency,
            form={"model": model},
            repeats=args.repeats,
            timeout_s=args.timeout_s,
        )
    )
    lat = run.latencies
    canonical = model if model in run.after else next(iter(run.after), model)
    delta = stats_delta(run.before, run.after, canonical)
    text_of = {f.name: f.text for f in corpus}
    done = [a for a in run.answers if a.ok]
    known = any(text_of.values())
    summary = {
        "model": model,
        "concurrency": args.concurrency,
        "requests": len(lat),
        "errors": len(run.errors),
        "audio_s": round(run.audio_s, 2),
        "wall_s": round(run.wall_s, 2),
        "rtfx": round(run.audio_s / run.wall_s, 2) if run.wall_s else None,
        "latency_p50_s": percentile(lat, 50, digits=3),
        "latency_p95_s": percentile(lat, 95, digits=3),
        "latency_p99_s": percentile(lat, 99, digits=3),
        "latency_mean_s": round(statistics.fmean(lat), 3) if lat else None,
        "batch_size_counts": delta["batch_size_counts"],
        "padding_efficiency": round(delta["padding_efficiency"], 3),
        "wer": (
            round(word_error_rate([text_of[a.file] for a in done], [a.text for a in done]), 4)
            if known
            else None
        ),
        "corpus_files": len(corpus),
        "corpus_audio_s": round(sum(f.duration_s for f in corpus), 1),
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
    for err in run.errors[:5]:
        print("error:", err)
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
