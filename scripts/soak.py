"""Soak: does any process of the service grow in memory under sustained load?

C clients (default 16) post a mix of short espeak-ng files (1-3 sentences) and long ones (up
to ``--long-max-s``) for ``--duration-s`` (30 min); every ``--sample-s`` the RSS of every Ray
process of the service (found from its port, never another engineer's cluster) is sampled.
A 503 with Retry-After is *rejected*, not an error: the client waits that long (capped at
30 s, jittered), as an OpenAI SDK client does. Written to ``--out-dir``: ``rss.csv``,
``requests.csv``, ``windows.csv`` (per ``--window-s``), ``summary.json`` and ``soak.png``;
printed: per process the RSS slope after ``--warmup-s`` (least squares, and over each
window's minimum) and per window p50/p95. Targets: slope < 20 MB/h, 0 errors, the last
window's p95 within ``--p95-drift`` of the first.

    python -m scripts.soak --start                       # serve ray_configs/serve.yaml itself
    python -m scripts.soak --url http://127.0.0.1:8000   # an already running service
    python -m scripts.soak --start --duration-s 1200 --env MALLOC_ARENA_MAX=2
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from scripts.common.audio import SpokenFile, long_files, sentence_file
from scripts.common.http import Answer, LoopedLoad, percentile
from scripts.common.service import REPO, RssSampler, free_port, serve_run, stop_group
from serve_app.tools.speech import SENTENCES
from serve_app.tools.tune_sweep import machine

SLOPE_TARGET_MB_PER_H = 20.0
NAN = float("nan")
DEFAULT_CONFIG = REPO / "ray_configs" / "serve.yaml"


def make_corpus(
    out_dir: Path, *, num_short: int, num_long: int, long_max_s: float, seed: int = 0
) -> list[SpokenFile]:
    """Short files of 1-3 sentences and long files of sentences joined with pauses.

    The long files' target lengths spread evenly up to ``long_max_s`` (e.g. 30, 60, 90,
    120 s for four files), so segmenting, packing and the 30 s cap are all exercised.
    """
    n = len(SENTENCES)
    shorts = [
        sentence_file(
            out_dir,
            f"short{i:02d}.wav",
            [SENTENCES[(i * 3 + j) % n] for j in range(1 + i % 3)],
            pause_s=0.6 + 0.2 * (i % 3),
            kind="short",
        )
        for i in range(num_short)
    ]
    durations = [long_max_s * (i + 1) / num_long for i in range(num_long)]
    return shorts + long_files(out_dir, durations, seed=seed)


# -- figures -----------------------------------------------------------------------------


def slope_mb_per_hour(times_s: list[float], values_mb: list[float]) -> float:
    """Least-squares slope of RSS against time, in MB per hour (nan with < 2 samples)."""
    if len(times_s) < 2 or max(times_s) - min(times_s) <= 0:
        return NAN
    slope_per_s = np.polyfit(np.asarray(times_s), np.asarray(values_mb), 1)[0]
    return float(slope_per_s * 3600.0)


@dataclass
class ProcessFigures:
    pid: int
    process: str
    samples: int
    first_mb: float
    last_mb: float
    max_mb: float
    slope_mb_per_h: float  # over the samples after the warm-up
    # Over the lowest sample of each window after the warm-up: what the process keeps
    # between its busiest moments. A leak raises it; a busy replica's transient working
    # set (a 2-minute file's features) only makes the plain slope noisy.
    floor_slope_mb_per_h: float = NAN


@dataclass
class WindowFigures:
    start_s: float
    end_s: float
    requests: int
    errors: int
    rejected: int  # 503 + Retry-After (admission control)
    p50_s: float
    p95_s: float


@dataclass
class SoakSummary:
    url: str
    clients: int
    duration_s: float
    sample_s: float
    warmup_s: float
    requests: int
    errors: int  # failures: anything but a 200 or an admission-control 503
    rejected: int  # 503 + Retry-After; the client waited and went on
    ok: int
    audio_s: float
    processes: list[ProcessFigures]
    windows: list[WindowFigures]
    max_slope_mb_per_h: float
    p95_drift: float  # last post-warm-up window's p95 / first post-warm-up window's p95
    passed: dict[str, bool] = field(default_factory=dict)
    machine: str = ""
    started_utc: str = ""
    error_samples: list[str] = field(default_factory=list)
    load_avg_1m_mean: float = NAN  # the host's, during the run (shared machine)
    load_avg_1m_max: float = NAN


def floor_slope_mb_per_hour(after: list[tuple[float, float]], window_s: float) -> float:
    """Slope (MB/h) of each ``window_s`` window's minimum, at the window's middle.

    A window with fewer than half the samples of the fullest one (the run's tail) is left
    out: the minimum of two samples is not the minimum of ten."""
    if not after or window_s <= 0:
        return NAN
    start = after[0][0]
    windows: dict[int, list[float]] = {}
    for t, v in after:
        windows.setdefault(int((t - start) // window_s), []).append(v)
    fullest = max(len(values) for values in windows.values())
    kept = sorted(i for i, values in windows.items() if len(values) * 2 >= fullest)
    times = [start + (i + 0.5) * window_s for i in kept]
    return slope_mb_per_hour(times, [min(windows[i]) for i in kept])


def process_figures(
    samples: list[tuple[float, int, str, float]], warmup_s: float, window_s: float = 300.0
) -> list[ProcessFigures]:
    by_pid: dict[int, list[tuple[float, str, float]]] = {}
    for t_s, pid, label, value in samples:
        by_pid.setdefault(pid, []).append((t_s, label, value))
    figures = []
    for pid, rows in sorted(by_pid.items(), key=lambda kv: kv[1][0][1]):
        after = [(t, v) for t, _, v in rows if t >= warmup_s]
        figures.append(
            ProcessFigures(
                pid=pid,
                process=rows[0][1],
                samples=len(rows),
                first_mb=rows[0][2],
                last_mb=rows[-1][2],
                max_mb=max(v for _, _, v in rows),
                slope_mb_per_h=slope_mb_per_hour([t for t, _ in after], [v for _, v in after]),
                floor_slope_mb_per_h=floor_slope_mb_per_hour(after, window_s),
            )
        )
    return figures


def window_figures(
    records: list[Answer], window_s: float, duration_s: float
) -> list[WindowFigures]:
    """Requests grouped by the window their start falls in."""
    count = max(1, math.ceil(duration_s / window_s))
    windows = []
    for i in range(count):
        lo, hi = i * window_s, min((i + 1) * window_s, duration_s)
        inside = [r for r in records if lo <= r.t_start_s < hi]
        ok = [r.latency_s for r in inside if r.ok]
        windows.append(
            WindowFigures(
                start_s=lo,
                end_s=hi,
                requests=len(inside),
                errors=sum(1 for r in inside if r.failed),
                rejected=sum(1 for r in inside if r.rejected),
                p50_s=percentile(ok, 50, NAN),
                p95_s=percentile(ok, 95, NAN),
            )
        )
    return windows


def summarize(
    *,
    url: str,
    clients: int,
    duration_s: float,
    sample_s: float,
    warmup_s: float,
    window_s: float,
    records: list[Answer],
    samples: list[tuple[float, int, str, float]],
    p95_drift_limit: float,
) -> SoakSummary:
    processes = process_figures(samples, warmup_s, window_s)
    windows = window_figures(records, window_s, duration_s)
    errors = sum(1 for r in records if r.failed)
    slopes = [p.slope_mb_per_h for p in processes if not math.isnan(p.slope_mb_per_h)]
    max_slope = max(slopes) if slopes else NAN
    floors = [p.floor_slope_mb_per_h for p in processes]
    floors = [f for f in floors if not math.isnan(f)]
    steady = [w for w in windows if w.start_s >= warmup_s and not math.isnan(w.p95_s)]
    if len(steady) < 2:  # short runs: compare the first and last windows with requests
        steady = [w for w in windows if not math.isnan(w.p95_s)]
    drift = steady[-1].p95_s / steady[0].p95_s if len(steady) >= 2 else NAN
    summary = SoakSummary(
        url=url,
        clients=clients,
        duration_s=duration_s,
        sample_s=sample_s,
        warmup_s=warmup_s,
        requests=len(records),
        errors=errors,
        rejected=sum(1 for r in records if r.rejected),
        ok=sum(1 for r in records if r.ok),
        audio_s=sum(r.audio_s for r in records),
        processes=processes,
        windows=windows,
        max_slope_mb_per_h=max_slope,
        p95_drift=drift,
        error_samples=[f"{r.outcome} {r.error}" for r in records if r.failed][:5],
    )
    summary.passed = {
        f"slope < {SLOPE_TARGET_MB_PER_H:g} MB/h (every process)": bool(
            slopes and max_slope < SLOPE_TARGET_MB_PER_H
        ),
        f"floor slope < {SLOPE_TARGET_MB_PER_H:g} MB/h (every process, window minima)": bool(
            floors and max(floors) < SLOPE_TARGET_MB_PER_H
        ),
        "0 errors": errors == 0,
        f"p95 drift < {p95_drift_limit:g}x": bool(
            not math.isnan(drift) and drift < p95_drift_limit
        ),
    }
    return summary


# -- output ------------------------------------------------------------------------------


def write_outputs(
    out_dir: Path,
    summary: SoakSummary,
    records: list[Answer],
    samples: list[tuple[float, int, str, float]],
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("rss.csv", "requests.csv", "windows.csv", "summary.json", "soak.png")
    paths = {name.split(".")[0].replace("soak", "plot"): out_dir / name for name in names}
    request_rows = [
        {"t_start_s": f"{r.t_start_s:.3f}", "t_end_s": f"{r.t_end_s:.3f}",
         "latency_s": f"{r.latency_s:.3f}", "status": r.status, "audio_s": f"{r.audio_s:.2f}",
         "kind": r.kind, "error": r.error or (f"retry-after {r.retry_after}" if r.rejected else "")}
        for r in sorted(records, key=lambda r: r.t_start_s)
    ]  # fmt: skip
    tables = {
        "rss": [
            {"t_s": f"{t:.1f}", "pid": pid, "process": label, "rss_mb": f"{v:.2f}"}
            for t, pid, label, v in samples
        ],
        "requests": request_rows,
        "windows": [
            {**asdict(w), "p50_s": f"{w.p50_s:.3f}", "p95_s": f"{w.p95_s:.3f}"}
            for w in summary.windows
        ],
    }
    for name, rows in tables.items():
        with paths[name].open("w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    paths["summary"].write_text(json.dumps(asdict(summary), indent=2))
    plot(paths["plot"], summary, samples)
    return paths


def plot(path: Path, summary: SoakSummary, samples: list[tuple[float, int, str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_p95) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for proc in summary.processes:
        times, values = zip(*[(t / 60, v) for t, pid, _, v in samples if pid == proc.pid])
        label = f"{proc.process} [{proc.pid}] {proc.slope_mb_per_h:+.1f} MB/h"
        ax_rss.plot(times, values, marker=".", label=label)
    ax_rss.axvline(summary.warmup_s / 60, color="grey", linestyle="--", linewidth=1)
    ax_rss.set_ylabel("RSS (MB)")
    ax_rss.set_title(
        f"soak: {summary.clients} clients, {summary.duration_s / 60:.0f} min, "
        f"{summary.ok} ok, {summary.errors} errors, {summary.rejected} rejected (503)"
    )
    ax_rss.legend(fontsize=7, loc="best")
    mids = [(w.start_s + w.end_s) / 120 for w in summary.windows]
    ax_p95.plot(mids, [w.p95_s for w in summary.windows], marker="o", label="p95")
    ax_p95.plot(mids, [w.p50_s for w in summary.windows], marker="x", label="p50")
    ax_p95.set_xlabel("minutes")
    ax_p95.set_ylabel("latency per window (s)")
    ax_p95.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(summary: SoakSummary) -> str:
    lines = [
        f"== soak: {summary.url}, {summary.clients} clients, {summary.duration_s:.0f} s, "
        f"RSS every {summary.sample_s:g} s, slope after {summary.warmup_s:g} s ==",
        f"machine   {summary.machine}",
        f"requests  {summary.requests}: ok {summary.ok} ({summary.audio_s:.0f} s of audio), "
        f"errors {summary.errors}, rejected (503 + Retry-After) {summary.rejected}",
        f"load avg  1 min mean {summary.load_avg_1m_mean:.1f}, max {summary.load_avg_1m_max:.1f}",
    ]
    lines += [f"  error: {e}" for e in summary.error_samples]
    lines.append(
        "process                                   pid   first MB  last MB  max MB  MB/h"
        "  floor MB/h"
    )
    for p in summary.processes:
        lines.append(
            f"{p.process[:40]:40s} {p.pid:6d} {p.first_mb:9.1f} {p.last_mb:8.1f} "
            f"{p.max_mb:7.1f} {p.slope_mb_per_h:+7.1f} {p.floor_slope_mb_per_h:+9.1f}"
        )
    lines.append("window (s)     requests errors rejected  p50 s   p95 s")
    for w in summary.windows:
        lines.append(
            f"{w.start_s:5.0f}-{w.end_s:<6.0f} {w.requests:9d} {w.errors:6d} {w.rejected:8d} "
            f"{w.p50_s:7.2f} {w.p95_s:7.2f}"
        )
    lines.append(
        f"max slope {summary.max_slope_mb_per_h:+.1f} MB/h; p95 drift {summary.p95_drift:.2f}x"
    )
    lines += [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in summary.passed.items()]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def soak(
    *,
    url: str,
    corpus: list[SpokenFile],
    clients: int,
    duration_s: float,
    sample_s: float,
    warmup_s: float,
    window_s: float,
    model: str | None = None,
    long_fraction: float = 0.25,
    timeout_s: float = 600,
    p95_drift_limit: float = 1.5,
    seed: int = 0,
) -> tuple[SoakSummary, list[Answer], list[tuple[float, int, str, float]]]:
    """Run the load and the RSS sampler together; return the figures and the raw data."""
    port = urlparse(url).port or 80
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = LoopedLoad(
        url,
        corpus,
        form={"model": model} if model else None,
        timeout_s=timeout_s,
        long_fraction=long_fraction,
        honour_retry_after=True,
        seed=seed,
    )
    sampler = RssSampler(port, sample_s, load.t0)
    sampler.start()

    async def run() -> None:
        await load.set_clients(clients)
        await asyncio.sleep(max(0.0, duration_s - (time.monotonic() - load.t0)))
        await load.stop()  # the requests in flight are answered

    try:
        asyncio.run(run())
    finally:
        sampler.stop()
    summary = summarize(
        url=url,
        clients=clients,
        duration_s=duration_s,
        sample_s=sample_s,
        warmup_s=warmup_s,
        window_s=window_s,
        records=load.answers,
        samples=sampler.samples,
        p95_drift_limit=p95_drift_limit,
    )
    info = machine()
    summary.started_utc = started_utc
    summary.machine = f"{info['cpu']}, {info['cores']} CPUs, {info.get('memory_gib', '?')} GiB"
    if sampler.load_avg_1m:
        summary.load_avg_1m_mean = float(np.mean(sampler.load_avg_1m))
        summary.load_avg_1m_max = float(np.max(sampler.load_avg_1m))
    return summary, load.answers, sampler.samples


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running service (default with --start)")
    parser.add_argument("--start", action="store_true", help="serve --config on a free port")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for replicas")
    parser.add_argument("--model", default=None, help="model field (default: the server's)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=1800)
    parser.add_argument("--sample-s", type=float, default=30)
    parser.add_argument("--warmup-s", type=float, default=300)
    parser.add_argument("--window-s", type=float, default=300)
    parser.add_argument("--short-files", type=int, default=12)
    parser.add_argument("--long-files", type=int, default=4)
    parser.add_argument("--long-max-s", type=float, default=120)
    parser.add_argument("--long-fraction", type=float, default=0.25)
    parser.add_argument("--timeout-s", type=float, default=600, help="per request")
    parser.add_argument("--p95-drift", type=float, default=1.5)
    parser.add_argument("--out-dir", type=Path, default=Path("soak_out"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.start and not args.url:
        parser.error("give --url of a running service, or --start")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the service


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    env_vars = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        work = Path(tmp)
        corpus = make_corpus(
            work,
            num_short=args.short_files,
            num_long=args.long_files,
            long_max_s=args.long_max_s,
            seed=args.seed,
        )
        longs = [f"{f.name} {f.duration_s:.0f}s" for f in corpus if f.kind == "long"]
        print(f"corpus: {len(corpus)} files, " + ", ".join(longs), flush=True)
        service = None
        url = args.url
        if args.start:
            port = free_port()
            print(f"starting {args.config} on port {port} ...", flush=True)
            args.out_dir.mkdir(parents=True, exist_ok=True)
            log_path = args.out_dir / "serve_run.log"
            service = serve_run(args.config, port, work, env_vars=env_vars, log_path=log_path)
            url = f"http://127.0.0.1:{port}"
        try:
            summary, records, samples = soak(
                url=url,
                corpus=corpus,
                clients=args.clients,
                duration_s=args.duration_s,
                sample_s=args.sample_s,
                warmup_s=args.warmup_s,
                window_s=args.window_s,
                model=args.model,
                long_fraction=args.long_fraction,
                timeout_s=args.timeout_s,
                p95_drift_limit=args.p95_drift,
                seed=args.seed,
            )
        finally:
            if service is not None:
                stop_group(service)
    paths = write_outputs(args.out_dir, summary, records, samples)
    print(render(summary))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if all(summary.passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
