"""The batch tuner's measurement (:mod:`serve_app.tools.tune_batch`): one sweep point's
throughput and peak memory through ``BatchedRecognizer``, the knee among the points, and
what the host is (memory, GPU, CPU model)."""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WINDOW_S = 30.0  # the VAD's longest segment (and Whisper's window)


def psutil_module() -> Any:
    """psutil ships inside Ray (``ray/thirdparty_files``), which puts it on sys.path."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def nvidia_smi_used_mib() -> float | None:
    """GPU memory in use (MiB, all GPUs) by ``nvidia-smi``; None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return sum(float(x) for x in out.split())
    except (subprocess.SubprocessError, ValueError):
        return None


def machine() -> dict:
    """The host: CPU model, cores, memory, GPU, and the versions that matter."""
    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        info["memory_gib"] = round(psutil_module().virtual_memory().total / 2**30, 1)
    for pkg in ("ray", "funasr", "faster_whisper", "ctranslate2"):
        with contextlib.suppress(Exception):
            info[pkg] = __import__(pkg).__version__
    return info


@dataclass(frozen=True)
class SweepPoint:
    """One measured batch capacity (the three batch settings) and what it gave."""

    max_batch_items: int
    max_forward_audio_s: float  # padded-cost budget of one forward pass
    max_batch_audio_s: float  # capacity of one dynamic batch
    throughput_rtfx: float  # seconds of speech per wall-clock second
    peak_memory_bytes: int
    forward_passes: int = 0
    padding_efficiency: float = 1.0
    ok: bool = True  # False: ran out of memory or failed
    error: str = ""


def pick_knee(
    points: Sequence[SweepPoint], *, memory_limit_bytes: float, tolerance: float = 0.05
) -> SweepPoint:
    """The golden batch capacity: the smallest one within ``tolerance`` of the best.

    Only points that succeeded and peaked at or under ``memory_limit_bytes`` count. Among
    them, the best throughput is found, and the smallest capacity (by audio budget, then
    item cap) reaching at least ``(1 - tolerance)`` of it is returned: past the knee a
    larger batch buys little throughput for more latency and memory. Raises ``ValueError``
    when no point fits.
    """
    if not 0 <= tolerance < 1:
        raise ValueError("tolerance must be in [0, 1)")
    fitting = [p for p in points if p.ok and p.peak_memory_bytes <= memory_limit_bytes]
    if not fitting:
        raise ValueError(
            f"no sweep point fits under the memory limit of {memory_limit_bytes / 2**30:.2f} GiB"
        )
    best = max(p.throughput_rtfx for p in fitting)
    near = [p for p in fitting if p.throughput_rtfx >= (1.0 - tolerance) * best]
    return min(near, key=lambda p: (p.max_forward_audio_s, p.max_batch_items))


class PeakRss:
    """Samples this process's RSS in a thread (CPU memory has no allocator peak counter)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._proc = psutil_module().Process()
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


class PeakMemory:
    """Peak memory of one sweep point on the device at hand."""

    def __init__(self, device: str, backend: str) -> None:
        self.device = device
        self.backend = backend
        self.peak = 0
        self._rss: PeakRss | None = None
        self._smi_stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device == "cpu":
            self._rss = PeakRss().__enter__()
        elif self.backend == "funasr":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            # CTranslate2 allocates outside torch: sample nvidia-smi instead.
            self._smi_thread = threading.Thread(target=self._smi, daemon=True)
            self._smi_thread.start()
        return self

    def _smi(self) -> None:
        while not self._smi_stop.is_set():
            used = nvidia_smi_used_mib()
            if used is not None:
                self.peak = max(self.peak, int(used * 2**20))
            self._smi_stop.wait(0.2)

    def __exit__(self, *exc: object) -> None:
        if self._rss is not None:
            self._rss.__exit__(*exc)
            self.peak = self._rss.peak
        elif self.backend == "funasr":
            import torch

            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._smi_stop.set()
            self._smi_thread.join()


def memory_limit_bytes(device: str, headroom: float, limit_gib: float | None) -> float:
    """What the recognizer may use: ``limit_gib``, else (1 - headroom) of what is there.

    CUDA: the device's total memory. CPU: this process's RSS now plus the memory the
    system reports available (other processes' memory is not ours to take).
    """
    if limit_gib is not None:
        return limit_gib * 2**30
    if device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        return (1.0 - headroom) * total
    psutil = psutil_module()
    own = psutil.Process().memory_info().rss
    return own + (1.0 - headroom) * psutil.virtual_memory().available


def workload(segments: Sequence[Any], seconds: float, seed: int = 0) -> list[Any]:
    """A deterministic sample of the corpus's segments totalling at least ``seconds``."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(segments))
    out, total = [], 0.0
    for i in order:
        out.append(segments[int(i)])
        total += len(segments[int(i)]) / 16000
        if total >= seconds:
            break
    return out


def dynamic_batches(jobs: Sequence[Any], *, items: int, capacity_s: float) -> list[list[Any]]:
    """How Serve's recognizer groups queued segments under saturation, in arrival order.

    Each item costs ``item_cost_s`` (at least ``capacity_s / items``) and a batch takes
    queued items until the next would exceed ``capacity_s``: what ``@serve.batch`` and the
    deployment's coalescer do when the queue is never empty.
    """
    from serve_app.core.batching import item_cost_s

    out: list[list[Any]] = []
    current: list[Any] = []
    used = 0.0
    for job in jobs:
        cost = item_cost_s(job.duration_s, max_batch_audio_s=capacity_s, max_batch_items=items)
        if current and used + cost > capacity_s:
            out.append(current)
            current, used = [], 0.0
        current.append(job)
        used += cost
    if current:
        out.append(current)
    return out


def measure(
    backend: Any,
    jobs: Sequence[Any],
    *,
    items: int,
    budget_s: float,
    dynamic_s: float,
    device: str,
    backend_kind: str,
    probe: Sequence[Any] | None,
    mode: str = "serve",
) -> SweepPoint:
    """Throughput and peak memory of one capacity.

    ``mode="serve"``: dynamic batches of ``items`` / ``dynamic_s`` in arrival order, each
    sorted and packed into forwards of ``budget_s`` by ``BatchedRecognizer`` (the online
    path at saturation).
    ``mode="offline"``: the whole workload in one ``transcribe_batch``, globally sorted
    (the Ray Data path, and the benchmark's floor).
    """
    from serve_app.config import BatchSettings
    from serve_app.recognizers.base import BatchStats, is_out_of_memory
    from serve_app.recognizers.factory import batched

    # Planned as served (forward_overhead_s "auto": the backend's own figure).
    runner = batched(backend, BatchSettings(max_forward_audio_s=budget_s, max_batch_items=items))
    calls: Sequence[Sequence[Any]] = [jobs]
    if mode == "serve":
        calls = dynamic_batches(jobs, items=items, capacity_s=dynamic_s)
    total = BatchStats()
    results: list[Any] = []
    try:
        with PeakMemory(device, backend_kind) as memory:
            started = time.perf_counter()
            for call in calls:
                results += runner.transcribe_batch(call)
                s = runner.last_stats
                total.num_items += s.num_items
                total.num_forward_passes += s.num_forward_passes
                total.real_audio_s += s.real_audio_s
                total.padded_audio_s += s.padded_audio_s
                total.num_oom_splits += s.num_oom_splits
            wall_s = time.perf_counter() - started
            if probe is not None:
                # The largest batch this config allows: items full-length segments at once.
                backend.forward(probe)
    except Exception as exc:  # an OOM ends the sweep, anything else too
        kind = "out of memory" if is_out_of_memory(exc) else type(exc).__name__
        return SweepPoint(
            items, budget_s, dynamic_s, 0.0, 0, ok=False, error=f"{kind}: {exc}"[:200]
        )
    failed = [r for r in results if isinstance(r, Exception)]
    if failed or total.num_oom_splits:
        why = f"{len(failed)} failed items, {total.num_oom_splits} OOM splits"
        return SweepPoint(items, budget_s, dynamic_s, 0.0, memory.peak, ok=False, error=why)
    padded = total.padded_audio_s
    if backend_kind == "whisper":
        padded = 30.0 * total.num_items  # Whisper encodes every item as a 30 s window
    return SweepPoint(
        max_batch_items=items,
        max_forward_audio_s=budget_s,
        max_batch_audio_s=dynamic_s,
        throughput_rtfx=total.real_audio_s / wall_s,
        peak_memory_bytes=memory.peak,
        forward_passes=total.num_forward_passes,
        padding_efficiency=total.real_audio_s / padded if padded else 1.0,
    )
