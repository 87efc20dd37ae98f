"""The report: ratios between rows, the console table, the Markdown table, the JSON file."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from serve_app.tools.corpus import Corpus
from serve_app.tools.tune_sweep import machine

from .harness import row_title
from .orchestrate import RowResult

# (numerator row, denominator row, target or None)
RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("4", "1", 1.4),
    ("4", "3", None),
    ("4", "6", 0.85),
    ("5", "2", None),
    ("5", "6", 0.9),
    # Issue 25, ONNX Runtime (q = int8): >= 2x the torch Serve row, >= 0.9x its own floor,
    # >= 1.0x funasr-onnx's best mode on the same graph files.
    ("4q", "4", 2.0),
    ("4q", "6q", 0.9),
    ("4q", "7q", 1.0),
    ("4q", "8q", 1.0),
    ("4o", "6o", 0.9),
    ("5q", "6q", 0.9),
    ("6q", "6", None),
)
DEFAULT_RESULTS_DIR = Path("/tmp/asr-bench-results")


def ratios(results: Sequence[RowResult]) -> list[dict]:
    out = []
    by = {(r.model, r.row): r for r in results}
    for model in dict.fromkeys(r.model for r in results):
        for num, den, target in RATIOS:
            a, b = by.get((model, num)), by.get((model, den))
            if a is None and b is None and num[-1].isalpha():
                continue  # ONNX rows that were not asked for
            value = None
            if a and b and a.rtfx and b.rtfx:
                value = round(a.rtfx / b.rtfx, 3)
            out.append(
                {
                    "model": model,
                    "ratio": f"{num}/{den}",
                    "value": value,
                    "target": target,
                    "met": None if value is None or target is None else value >= target,
                }
            )
    return out


def render(results: Sequence[RowResult], ratio_rows: Sequence[dict]) -> str:
    lines = []
    header = (
        f"{'model':<16} {'row':<52} {'RTFx':>7} {'/core':>6} {'p50 s':>7} "
        f"{'p95 s':>7} {'p99 s':>7} "
        f"{'batches (passes, mean, max)':<28} {'pad.eff':>7} {'peak MiB':>9} {'load':>9}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for r in results:
        title = row_title(r.row)
        if r.status != "ok":
            lines.append(
                f"{r.model:<16} {title:<52} {r.status.upper():>7}  {first_line(r.reason)[:110]}"
            )
            continue

        def f(v: float | None, fmt: str = "{:.2f}") -> str:
            return "-" if v is None else fmt.format(v)

        load = f"{r.load_before:.2f}/{r.load_max:.1f}" if r.load_max is not None else "-"
        lines.append(
            f"{r.model:<16} {title:<52} {f(r.rtfx):>7} {f(r.rtfx_per_core):>6} "
            f"{f(r.latency_p50_s):>7} "
            f"{f(r.latency_p95_s):>7} {f(r.latency_p99_s):>7} "
            f"{batch_summary(r.batch_size_counts):<28} {f(r.padding_efficiency):>7} "
            f"{f(r.peak_rss_mib, '{:.0f}'):>9} {load:>9}"
        )
    lines.append("")
    lines.append("ratios (RTFx / RTFx):")
    for q in ratio_rows:
        if q["value"] is None:
            verdict = "n/a"
        elif q["target"] is None:
            verdict = "(no target)"
        else:
            verdict = f"target >= {q['target']}: {'MET' if q['met'] else 'MISSED'}"
        value = "-" if q["value"] is None else f"{q['value']:.2f}"
        lines.append(f"  {q['model']:<16} {q['ratio']:<5} {value:>6}  {verdict}")
    return "\n".join(lines)


def batch_summary(counts: dict | None) -> str:
    if not counts:
        return "-"
    sizes = sorted((int(k), v) for k, v in counts.items())
    n = sum(v for _, v in sizes)
    mean = sum(k * v for k, v in sizes) / n
    return f"{n} x, mean {mean:.1f}, max {sizes[-1][0]}"


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def render_markdown(results: Sequence[RowResult], ratio_rows: Sequence[dict]) -> str:
    """The same figures as a Markdown table (docs/BENCHMARKS.md is made from this)."""

    def f(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        "| model | row | RTFx | RTFx/core | p50 s | p95 s | p99 s "
        "| batch sizes (forwards: size x count) "
        "| padding eff. | peak RSS MiB | load before / max |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in results:
        title = row_title(r.row)
        if r.status != "ok":
            reason = r.reason.replace("\n", " ")[:300]
            lines.append(f"| {r.model} | {title} | {r.status.upper()} | | | | | {reason} | | | |")
            continue
        counts = r.batch_size_counts or {}
        dist = ", ".join(f"{k}x{v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0])))
        rtfx = f(r.rtfx)
        if r.steady_rtfx:
            rtfx += f" (steady {r.steady_rtfx:.2f})"
        peak = f(r.peak_rss_mib, "{:.0f}")
        if r.peak_ray_workers_rss_mib:
            peak += f" (Ray workers {r.peak_ray_workers_rss_mib:.0f})"
        lines.append(
            f"| {r.model} | {title} | {rtfx} | {f(r.rtfx_per_core)} | "
            f"{f(r.latency_p50_s)} | {f(r.latency_p95_s)} | "
            f"{f(r.latency_p99_s)} | {dist or '-'} | {f(r.padding_efficiency)} | {peak} | "
            f"{f(r.load_before)} / {f(r.load_max)} |"
        )
    lines += ["", "| model | ratio | value | target |", "|---|---|---:|---|"]
    for q in ratio_rows:
        target = "-" if q["target"] is None else f">= {q['target']}"
        if q["met"] is not None:
            target += " met" if q["met"] else " MISSED"
        lines.append(f"| {q['model']} | {q['ratio']} | {f(q['value'])} | {target} |")
    return "\n".join(lines)


def write_report(
    args: argparse.Namespace,
    started: float,
    corpus: Corpus,
    configs: dict[str, dict],
    results: Sequence[RowResult],
    ratio_rows: Sequence[dict],
) -> Path:
    """The JSON report (``--json-out``, else ``DEFAULT_RESULTS_DIR/bench-<time>.json``)
    and the Markdown table next to it (``.md``)."""
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items() if not k.startswith("_")},
        "corpus": {
            "dir": str(corpus.directory),
            "files": len(corpus.files),
            "audio_s": round(corpus.total_s, 1),
            "durations_s": [round(f.duration_s, 1) for f in corpus.files],
        },
        "configs": configs,
        "results": [asdict(r) for r in results],
        "ratios": ratio_rows,
    }
    out = args.json_out or DEFAULT_RESULTS_DIR / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(render_markdown(results, ratio_rows) + "\n")
    print(f"\nresults: {out} (and {out.with_suffix('.md').name})")
    return out
