"""Overload: N clients at once, each posting a long file; is every answer a 200 or a fast
503 (with Retry-After), and is the service healthy afterwards?

    python -m scripts.overload --url http://127.0.0.1:8000            # 64 x 2-3 min files
    python -m scripts.overload --url ... --clients 16 --files a.wav b.wav

Without ``--files`` it speaks 2-3 minute files with espeak-ng (cached under
``--work-dir``). One file is sent alone first (the baseline: one request's processing time
on an idle service), then all clients together. Printed: the answers by status, the 503s'
answer time, the accepted requests' latency against the bound ``max_queue_wait_s`` + their
own processing time (the baseline scaled by duration), and ``/healthz`` after the burst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from scripts.common.audio import SpokenFile, long_files, read_files
from scripts.common.http import Answer, percentile, send


@dataclass
class Report:
    clients: int
    counts: dict[str, int]
    rejected_max_s: float | None
    rejected_p95_s: float | None
    rejected_without_retry_after: int
    accepted_p50_s: float | None
    accepted_p95_s: float | None
    accepted_max_s: float | None
    baseline_s: float | None
    max_queue_wait_s: float
    accepted_bound_p95_s: float | None
    healthz_after: int | None
    wall_s: float
    answers: list[Answer] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every answer a 200 or a 503 within 1 s, none hung, healthy after, and the
        accepted p95 within the bound."""
        only_200_503 = set(self.counts) <= {"200", "503"}
        fast = self.rejected_max_s is None or self.rejected_max_s <= 1.0
        within = (
            self.accepted_p95_s is None
            or self.accepted_bound_p95_s is None
            or self.accepted_p95_s <= self.accepted_bound_p95_s
        )
        return only_200_503 and fast and within and self.healthz_after == 200


def make_long_files(
    out_dir: Path, count: int, *, min_s: float, max_s: float, seed: int = 0
) -> list[Path]:
    """``count`` WAVs of ``min_s``-``max_s`` seconds of espeak sentences with pauses,
    cached in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"long_{int(min_s)}_{int(max_s)}_{seed}_{i:02d}.wav" for i in range(count)]
    if not all(p.exists() for p in paths):
        rng = random.Random(seed)
        durations = [rng.uniform(min_s, max_s) for _ in paths]
        for path, file in zip(paths, long_files(out_dir, durations, seed=seed)):
            path.write_bytes(file.wav)
    return paths


async def run_overload(
    url: str,
    files: list[Path],
    *,
    clients: int = 64,
    model: str | None = None,
    timeout_s: float = 240.0,
    max_queue_wait_s: float = 60.0,
    baseline: bool = True,
) -> Report:
    url = url.rstrip("/")
    spoken: list[SpokenFile] = read_files(files)
    form = {"cache": "false", **({"model": model} if model else {})}  # every one queued
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        baseline_s = baseline_audio_s = None
        if baseline:
            longest = max(spoken, key=lambda f: f.duration_s)
            t0 = time.monotonic()
            first = await send(client, url, longest, Answer(0.0), form, t0)
            if first.status == 200:
                baseline_s, baseline_audio_s = first.latency_s, longest.duration_s
        t0 = time.monotonic()
        answers = await asyncio.gather(
            *(send(client, url, spoken[i % len(spoken)], Answer(0.0), form, t0)
              for i in range(clients))
        )  # fmt: skip
        wall_s = time.monotonic() - t0
        try:
            healthz: int | None = (await client.get(f"{url}/healthz", timeout=10)).status_code
        except httpx.HTTPError:
            healthz = None
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer.outcome] = counts.get(answer.outcome, 0) + 1
    rejected = [a.latency_s for a in answers if a.status == 503]
    accepted = [a for a in answers if a.status == 200]
    bounds = (
        [max_queue_wait_s + baseline_s * a.audio_s / baseline_audio_s for a in accepted]
        if baseline_s is not None and baseline_audio_s
        else []
    )
    return Report(
        clients=clients,
        counts=dict(sorted(counts.items())),
        rejected_max_s=max(rejected) if rejected else None,
        rejected_p95_s=percentile(rejected, 95),
        rejected_without_retry_after=sum(1 for a in answers if a.status == 503 and not a.rejected),
        accepted_p50_s=percentile([a.latency_s for a in accepted], 50),
        accepted_p95_s=percentile([a.latency_s for a in accepted], 95),
        accepted_max_s=max((a.latency_s for a in accepted), default=None),
        baseline_s=baseline_s,
        max_queue_wait_s=max_queue_wait_s,
        accepted_bound_p95_s=percentile(bounds, 95),
        healthz_after=healthz,
        wall_s=wall_s,
        answers=list(answers),
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(report: Report) -> None:
    print(f"clients: {report.clients}, burst wall time {report.wall_s:.1f} s")
    print(f"answers: {report.counts}")
    print(
        f"503 answer time: max {_fmt(report.rejected_max_s)} s, p95 "
        f"{_fmt(report.rejected_p95_s)} s (target <= 1 s); without Retry-After: "
        f"{report.rejected_without_retry_after}"
    )
    print(
        f"accepted latency: p50 {_fmt(report.accepted_p50_s)} s, p95 "
        f"{_fmt(report.accepted_p95_s)} s, max {_fmt(report.accepted_max_s)} s; bound p95 "
        f"(max_queue_wait_s {report.max_queue_wait_s:.0f} + own processing, baseline "
        f"{_fmt(report.baseline_s)} s alone) {_fmt(report.accepted_bound_p95_s)} s"
    )
    print(f"/healthz after: {report.healthz_after}")
    print(f"bar met: {report.ok}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--files", nargs="*", type=Path, help="audio files (default: espeak)")
    parser.add_argument("--num-files", type=int, default=8, help="distinct generated files")
    parser.add_argument("--min-s", type=float, default=120.0)
    parser.add_argument("--max-s", type=float, default=180.0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--timeout-s", type=float, default=240.0, help="client timeout")
    parser.add_argument(
        "--max-queue-wait-s", type=float, default=60.0, help="the served config's value"
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "asr-overload"
    )
    parser.add_argument("--json", type=Path, help="write the report (with every answer) here")
    args = parser.parse_args(argv)
    files = args.files or make_long_files(
        args.work_dir, args.num_files, min_s=args.min_s, max_s=args.max_s
    )
    report = asyncio.run(
        run_overload(
            args.url,
            files,
            clients=args.clients,
            model=args.model,
            timeout_s=args.timeout_s,
            max_queue_wait_s=args.max_queue_wait_s,
            baseline=not args.no_baseline,
        )
    )
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
