"""The orchestrator: each row in a child process of its own (``-m scripts.bench --_worker``),
after the load average drops, sampled meanwhile, rerun when other processes took the CPU."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.common.http import percentile
from scripts.common.service import REPO
from serve_app.tools.models import ModelSpec

from .harness import FUNASR_ONNX, row_title, split_row
from .measure import TreeSampler, _psutil, wait_for_quiet


@dataclass
class RowResult:
    model: str
    row: str
    status: str  # ok | n/a | failed
    rtfx: float | None = None
    wall_s: float | None = None
    audio_s: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    batch_size_counts: dict | None = None
    padding_efficiency: float | None = None
    peak_rss_mib: float | None = None
    peak_ray_workers_rss_mib: float | None = None
    peak_gpu_mib: float | None = None
    load_before: float | None = None
    load_max: float | None = None
    foreign_cores: float | None = None
    steady_rtfx: float | None = None
    rtfx_per_core: float | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    timing_scope: str = ""
    extra: dict = field(default_factory=dict)


def not_applicable(model: ModelSpec, row: str, args: argparse.Namespace) -> str | None:
    if row == "3" and model.is_whisper:
        return (
            "funasr-server serves FunASR AutoModel models only (its --model-path goes to "
            "AutoModel); it cannot load a CTranslate2 Whisper model"
        )
    base, onnx = split_row(row)
    if onnx and (model.is_whisper or args.device != "cpu"):
        return "ONNX Runtime rows are for FunASR models on CPU (runtime: onnx)"
    if base in ("7", "8") and not onnx:
        return "the funasr-onnx rows run on ONNX Runtime: 7o/7q, 8o/8q"
    if base in ("7", "8") and importlib.util.find_spec("funasr_onnx") is None:
        return f"funasr-onnx is not installed (pip install {FUNASR_ONNX} --no-deps)"
    return None


def run_row(model: ModelSpec, row: str, args: argparse.Namespace, base: dict) -> RowResult:
    """Run one row; run it again (up to ``--retries``) when other processes took more than
    ``--max-foreign-cores`` of the CPU meanwhile, keeping the least disturbed attempt."""
    reason = not_applicable(model, row, args)
    if reason:
        return RowResult(model=model.name, row=row, status="n/a", reason=reason)
    attempts: list[RowResult] = []
    for attempt in range(args.retries + 1):
        result = _run_row_once(model, row, args, base)
        attempts.append(result)
        if result.status != "ok" or (result.foreign_cores or 0.0) <= args.max_foreign_cores:
            break
        if attempt < args.retries:
            print(
                f"  other processes used {result.foreign_cores} cores meanwhile "
                f"(> {args.max_foreign_cores}): running the row again",
                flush=True,
            )
    ok = [a for a in attempts if a.status == "ok"]
    best = min(ok, key=lambda a: a.foreign_cores or 0.0) if ok else attempts[-1]
    if len(attempts) > 1:
        best.notes.append(
            f"{len(attempts)} attempts (others' CPU use: "
            f"{[a.foreign_cores for a in attempts]} cores); kept the least disturbed"
        )
    return best


def _run_row_once(model: ModelSpec, row: str, args: argparse.Namespace, base: dict) -> RowResult:
    load_before, quiet = wait_for_quiet(args.max_load, args.load_wait_s)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{model.name}-row{row}-"))
    spec = {
        **base,
        "row": row,
        "model": asdict(model),
        "tmp": str(tmp),
        "out": str(tmp / "out.json"),
    }
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = tmp / "worker.log"
    print(f"[{model.name} row {row_title(row)}] (load {load_before:.2f}) ...", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.bench", "--_worker", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"},
        )
        sampler = TreeSampler(proc.pid, gpu=args.device == "cuda")
        try:
            with sampler:
                try:
                    rc = proc.wait(timeout=args.row_timeout_s)
                except subprocess.TimeoutExpired:
                    rc = None
        except BaseException:  # Ctrl-C / SIGTERM: take the row's processes down with us
            _reap(proc, sampler.pids)
            raise
        _reap(proc, sampler.pids)
    result = RowResult(
        model=model.name, row=row, status="failed", load_before=round(load_before, 2)
    )
    result.load_max = round(max(sampler.loads), 2) if sampler.loads else None
    result.foreign_cores = round(sampler.foreign_cores, 2)
    if not quiet:
        result.notes.append(f"load average stayed >= {args.max_load} (waited {args.load_wait_s} s)")
    out_path = Path(spec["out"])
    if rc != 0 or not out_path.exists():
        tail = log_path.read_text()[-3000:] if log_path.exists() else ""
        result.reason = f"worker exit {rc}; log {log_path}:\n{tail}"
        print(result.reason, flush=True)
        return result
    out = json.loads(out_path.read_text())
    lat = out.pop("latencies_s", [])
    result.status = "ok"
    result.wall_s = round(out.pop("wall_s"), 2)
    result.audio_s = round(out.pop("audio_s"), 1)
    result.rtfx = round(result.audio_s / result.wall_s, 2) if result.wall_s else None
    # Per core: the row's model threads (rows 4, 5: the cores Ray was given, all roles).
    result.rtfx_per_core = round(result.rtfx / args.threads, 2) if result.rtfx else None
    result.latency_p50_s = _r(percentile(lat, 50))
    result.latency_p95_s = _r(percentile(lat, 95))
    result.latency_p99_s = _r(percentile(lat, 99))
    result.batch_size_counts = out.pop("batch_size_counts", None)
    result.padding_efficiency = out.pop("padding_efficiency", None)
    result.peak_rss_mib = round(sampler.peak_rss / 2**20)
    if split_row(row)[0] in ("4", "5"):
        result.peak_ray_workers_rss_mib = round(sampler.peak_ray_workers_rss / 2**20)
    result.peak_gpu_mib = out.pop("gpu_peak_mib", None) or sampler.peak_gpu_mib
    steady = out.pop("steady_wall_s", None)
    if steady:
        result.steady_rtfx = round(result.audio_s / steady, 2)
    result.notes += out.pop("notes", [])
    result.timing_scope = out.pop("timing_scope", "")
    result.extra = out
    if args.keep_logs:
        result.extra["log"] = str(log_path)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"  -> RTFx {result.rtfx}  wall {result.wall_s} s  peak {result.peak_rss_mib} MiB  "
        f"(load max {result.load_max}, others used {result.foreign_cores} cores)",
        flush=True,
    )
    if out.get("cpu_core_s"):
        print(f"     CPU core-s by role: {out['cpu_core_s']}", flush=True)
    if out.get("cpu_core_s_steady"):
        print(f"     CPU core-s by role, steady window: {out['cpu_core_s_steady']}", flush=True)
    return result


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _reap(proc: subprocess.Popen, pids: dict[int, float]) -> None:
    """Kill what the row started and left behind: only pids seen in the row's own process
    tree, and only if the process is still the same one (same creation time)."""
    psutil = _psutil()
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid, created in pids.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if pid != os.getpid() and p.create_time() == created:
                p.kill()
