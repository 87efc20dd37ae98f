"""The GPU check's command line (``python -m scripts.gpu_check``): flags, the run, and the
report (JSON written after every row, a markdown table at the end)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.gpu_check import __doc__ as PACKAGE_DOC
from scripts.gpu_check.prepare import Budget, ensure_model, model_choices, preflight, prepare
from scripts.gpu_check.rows import check_model


def versions(device: str) -> dict:
    import torch

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        import funasr

        out["funasr"] = funasr.__version__
    except ImportError:
        out["funasr"] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        out["gpu"] = props.name
        out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        out["cuda"] = torch.version.cuda
    return out


COLUMNS = ("rtfx", "wall_s", "gpu_peak_mib")


def cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    lines = [
        "| row | model | precision | status | x real time | wall s | GPU peak MiB | notes |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in report["rows"]:
        note = row.get("reason", "")
        if row["id"] == "c_budget_sweep" and row["status"] == "ok":
            note = (
                f"knee {row['knee_max_batch_audio_s']:g} s ({row['knee_rtfx']}x, "
                f"{row['knee_gpu_peak_mib']} MiB); "
                + ", ".join(f"{p['max_batch_audio_s']:g}s:{p.get('rtfx')}x" for p in row["points"])
            )
            row = {**row, "rtfx": row["best_rtfx"]}
        elif row["id"] == "e_time_split" and row["status"] == "ok":
            note = (
                f"decode {row['decode_s']} s, fbank {row['cpu_fbank_s_in_c']} s "
                f"({row['cpu_fbank_share_of_c']:.0%} of c), idle {row['gpu_idle_fraction_c']:.0%}, "
                f"fbank cap x{row['fbank_cap_factor']}"
            )
        elif row["id"] == "f_oom_split" and row["status"] == "ok":
            note = (
                f"{row['finished_items']}/{row['items']} finished, {row['oom_splits']} splits, "
                f"{row['oom_errors_seen']} OOMs{' (simulated)' if row['simulated'] else ''}"
            )
        elif row["id"] == "g_gpu_fbank" and row["status"] == "ok":
            note = f"x{row['speedup_vs_c']} vs c, max |diff| {row['max_abs_diff']}"
        elif row["id"] == "g_overlap_prep" and row["status"] == "ok":
            note = f"x{row['speedup_vs_c']} vs c, {row['prep_threads']} threads"
        elif row.get("partial"):
            note = "partial (time budget)"
        if row.get("fallback"):
            note = f"fp32 fallback; {note}" if note else "fp32 fallback"
        cells = [cell(row.get(c)) for c in COLUMNS]
        lines.append(
            f"| {row['id']} | {row['model']} | {row['precision']} | {row['status']} | "
            + " | ".join(cells)
            + f" | {note} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(PACKAGE_DOC or "").split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny random models, tiny corpus")
    parser.add_argument("--precision", default="fp16,bf16", help="comma list (cuda only)")
    parser.add_argument("--models", default="paraformer,sensevoice", help="comma list")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--time-budget-s", type=float, default=420.0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gpu_check"))
    parser.add_argument("--vad-dir", type=Path, default=None, help="fsmn-vad folder")
    parser.add_argument("--corpus-s", type=float, default=0.0, help="corpus seconds (0: auto)")
    parser.add_argument("--cpu-threads", type=int, default=2, help="torch threads (fbank)")
    parser.add_argument("--prep-threads", type=int, default=4, help="row g_overlap_prep")
    parser.add_argument("--sweep-s", default="30,60,120,240,480,960,1920")
    parser.add_argument("--sweep-items", type=int, default=512)
    parser.add_argument("--oom-items", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cpu-autocast",
        action="store_true",
        help="on cpu keep --precision: CPU autocast and FunASR's fp16/bf16 flags (tests the "
        "per-precision failure and fp32 fallback paths; CPU autocast is not CUDA's policy)",
    )
    args = parser.parse_args(argv)
    args.sweep_s = [float(x) for x in args.sweep_s.split(",") if x.strip()]
    if args.tiny and args.sweep_s == [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0]:
        args.sweep_s = [4.0, 16.0]
        args.sweep_items = 8
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    budget = Budget(args.time_budget_s)
    import torch

    torch.set_num_threads(args.cpu_threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if args.device == "cpu" and not args.cpu_autocast:
        precisions = ["fp32"]  # autocast fp16/bf16 is CUDA-only in FunAsrBackend
    choices = model_choices(
        [m.strip() for m in args.models.split(",") if m.strip()], tiny=args.tiny
    )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    preflight()

    model_dirs = {}
    setup: dict[str, Any] = {}
    for choice in choices:
        folder, written_s = ensure_model(choice.random_name, args.work_dir, args.seed)
        model_dirs[choice.key] = folder
        setup[f"write_{choice.random_name}_s"] = round(written_s, 1)
    started = time.perf_counter()
    ctx = prepare(args, budget)
    setup["corpus_decode_vad_s"] = round(time.perf_counter() - started, 1)
    print(
        f"[gpu-check] corpus {len(ctx.corpus)} files, {ctx.audio_s:.0f} s; {len(ctx.segments)} "
        f"segments, {ctx.speech_s:.0f} s ({ctx.segments_source}); setup {budget.elapsed():.0f} s",
        file=sys.stderr,
        flush=True,
    )
    for choice in choices:
        check_model(ctx, choice, model_dirs[choice.key], precisions)

    durations = [f.duration_s for f in ctx.corpus]
    report = {
        "meta": {
            **versions(args.device),
            "argv": sys.argv[1:] if argv is None else list(argv),
            "tiny": args.tiny,
            "precisions": precisions,
            "cpu_threads": args.cpu_threads,
            "corpus": {
                "files": len(ctx.corpus),
                "audio_s": round(ctx.audio_s, 2),
                "min_s": round(min(durations), 2),
                "max_s": round(max(durations), 2),
                "seed": args.seed,
                "kind": "numpy speech-like bursts (voiced harmonics + noise, pauses), 16 kHz WAV",
            },
            "segments": {
                "count": len(ctx.segments),
                "speech_s": round(ctx.speech_s, 2),
                "source": ctx.segments_source,
            },
            "vad_dir": None if ctx.vad_dir is None else str(ctx.vad_dir),
            "setup": setup,
            "time_budget_s": args.time_budget_s,
            "wall_s": round(budget.elapsed(), 1),
            "weights": "RANDOM (architecture-faithful): throughput and memory only",
        },
        "rows": ctx.rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(markdown(report))
    print(f"\n[gpu-check] {len(ctx.rows)} rows in {budget.elapsed():.0f} s -> {args.out}")
    return 0
