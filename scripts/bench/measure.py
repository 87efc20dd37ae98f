"""Measurement helpers: forward-pass records, process-tree sampling (memory, other
processes' CPU), the load-average gate, and CPU core-seconds per role."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from serve_app.tools.tune_sweep import nvidia_smi_used_mib
from serve_app.tools.tune_sweep import psutil_module as _psutil


@dataclass
class BatchRecord:
    """Forward passes of one row: items per pass and real / padded audio."""

    sizes: Counter = field(default_factory=Counter)
    real_s: float = 0.0
    padded_s: float = 0.0

    def add(self, size: int, real_s: float, padded_s: float) -> None:
        self.sizes[int(size)] += 1
        self.real_s += real_s
        self.padded_s += padded_s

    def summary(self) -> dict:
        return {
            "batch_size_counts": {str(k): v for k, v in sorted(self.sizes.items())},
            "padding_efficiency": round(self.real_s / self.padded_s, 4) if self.padded_s else None,
        }


class TreeSampler:
    """Samples the RSS of a process tree (and GPU memory) while a row runs.

    Also integrates the CPU time used by processes *outside* the tree (other engineers'
    jobs): ``foreign_cores`` is their average number of busy cores during the row.
    """

    def __init__(
        self, root_pid: int, *, interval_s: float = 0.5, rescan_every: int = 4, gpu: bool = False
    ) -> None:
        self._psutil = _psutil()
        self._self = self._psutil.Process()
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.rescan_every = rescan_every
        self._samples = 0
        self._procs: dict[int, Any] = {}
        self._names: dict[int, str] = {}
        self.gpu = gpu
        self.peak_rss = 0
        self.peak_ray_workers_rss = 0
        self.peak_gpu_mib: float | None = None
        self.pids: dict[int, float] = {}  # pid -> create_time, to never kill a reused pid
        self.loads: list[float] = []
        self._tree_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sys_busy0 = self._system_busy_s()
        self._self_cpu0 = sum(self._self.cpu_times()[:2])
        self._started = time.monotonic()

    def _system_busy_s(self) -> float:
        t = self._psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._elapsed = time.monotonic() - self._started
        self._sys_busy = self._system_busy_s() - self._sys_busy0
        self._self_cpu = sum(self._self.cpu_times()[:2]) - self._self_cpu0

    def _run(self) -> None:
        last_gpu = 0.0
        while not self._stop.is_set():
            self.sample()
            if self.gpu and time.monotonic() - last_gpu > 1.0:
                last_gpu = time.monotonic()
                used = nvidia_smi_used_mib()
                if used is not None:
                    self.peak_gpu_mib = max(self.peak_gpu_mib or 0.0, used)
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        """One sample. Cheap on purpose: the sampler must not steal the row's CPU (on two
        cores, every slice taken from an OpenMP thread stalls its partner at the next
        barrier), so the tree is rescanned every few samples and Process objects kept."""
        ps = self._psutil
        self._samples += 1
        if self._samples % self.rescan_every == 1 or not self._procs:
            try:
                root = ps.Process(self.root_pid)
                found = [root, *root.children(recursive=True)]
            except ps.Error:
                found = []
            for p in found:
                if p.pid in self._procs:
                    # Ray workers retitle themselves (ray::IDLE -> ray::Actor) after start.
                    with contextlib.suppress(ps.Error):
                        self._names[p.pid] = p.name()
                else:
                    try:
                        self.pids.setdefault(p.pid, p.create_time())
                        self._names[p.pid] = p.name()
                    except ps.Error:
                        continue
                    self._procs[p.pid] = p
        total = workers = 0
        for pid, p in list(self._procs.items()):
            try:
                rss = p.memory_info().rss
                cpu = p.cpu_times()
            except ps.Error:
                del self._procs[pid]
                continue
            self._tree_cpu[pid] = cpu.user + cpu.system
            total += rss
            if self._names.get(pid, "").startswith("ray::"):
                workers += rss
        self.peak_rss = max(self.peak_rss, total)
        self.peak_ray_workers_rss = max(self.peak_ray_workers_rss, workers)
        self.loads.append(os.getloadavg()[0])

    @property
    def foreign_cores(self) -> float:
        own = sum(self._tree_cpu.values()) + self._self_cpu
        return max(0.0, (self._sys_busy - own) / self._elapsed) if self._elapsed else 0.0


def wait_for_quiet(max_load: float, wait_s: float) -> tuple[float, bool]:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        load = os.getloadavg()[0]
        if load < max_load:
            return load, True
        if time.monotonic() >= deadline:
            return load, False
        if not announced:
            print(f"  waiting for load average < {max_load} (now {load:.2f}) ...", flush=True)
            announced = True
        time.sleep(5)


def _process_label(p: Any) -> str:
    """A short role name for a process of the row (Ray retitles its workers)."""
    try:
        title = " ".join(p.cmdline()) or p.name()
    except Exception:
        return "gone"
    if title.startswith("ray::"):
        role = title.split()[0].removeprefix("ray::")
        # Ray Data's pool actors are titled after their stage class (row 5).
        if "RecognizeStage" in role:
            return "recognizer actor"
        if "DecodeVadStage" in role:
            return "decode+vad actor"
        if "AssembleStage" in role:
            return "assembler actor"
        if "Write" in role:
            return "ray data write tasks"
        if role == "IDLE":
            return "ray idle workers"
        for key in ("Recognizer", "Vad", "Ingress", "Proxy", "ServeController"):
            if key.lower() in role.lower():
                return {"Proxy": "serve proxy", "ServeController": "serve controller"}.get(
                    key, f"{key.lower()} replica"
                )
        return "ray other workers"
    if p.pid == os.getpid():
        return "benchmark + HTTP clients"
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py"):
        if key in title:
            return "ray system"
    return "other"


def cpu_by_process(pids: Iterable[int] | None = None) -> dict[int, tuple[str, float]]:
    """pid -> (role, user+system CPU seconds) for this process and all its descendants, or
    for ``pids`` (a service this process did not start: ``scripts.live_bench --url``)."""
    ps = _psutil()
    me = ps.Process()
    out = {}
    procs = [me, *me.children(recursive=True)] if pids is None else []
    for pid in pids or ():
        with contextlib.suppress(ps.Error):
            procs.append(ps.Process(pid))
    for p in procs:
        try:
            t = p.cpu_times()
        except ps.Error:
            continue
        out[p.pid] = (_process_label(p), t.user + t.system)
    return out


def cpu_breakdown(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU core-seconds per role between two :func:`cpu_by_process` snapshots."""
    by_role: dict[str, float] = {}
    for pid, (role, cpu_s) in after.items():
        by_role[role] = by_role.get(role, 0.0) + cpu_s - before.get(pid, (role, 0.0))[1]
    ranked = sorted(by_role.items(), key=lambda item: -item[1])
    return {role: round(value, 1) for role, value in ranked if value >= 0.05}


def format_roles(core_s: dict[str, float]) -> str:
    """``{"recognizer replica": 91.7, ...}`` -> ``"recognizer replica 91.7, ..."``."""
    return ", ".join(f"{role} {value:g}" for role, value in core_s.items()) or "-"


class CpuTimeline:
    """:func:`cpu_by_process` every ``interval_s`` in a thread, for a row whose processes
    come and go while it runs (row 5's actors exit with the job): CPU core-seconds per
    role between a time and the end, each process counted up to its last sample."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuTimeline:
        self.samples.append((time.time(), cpu_by_process()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.time(), cpu_by_process()))

    def breakdown(self, since_unix_s: float | None = None) -> tuple[dict[str, float], float]:
        """(core-seconds per role, window seconds) from the last sample at or before
        ``since_unix_s`` (default: the first) to the last sample."""
        if not self.samples:
            return {}, 0.0
        start = 0
        if since_unix_s is not None:
            for i, (t, _) in enumerate(self.samples):
                if t <= since_unix_s:
                    start = i
        latest: dict[int, tuple[str, float]] = {}
        for _, snapshot in self.samples[start:]:
            for pid, (role, cpu_s) in snapshot.items():
                # A process caught exiting has no title any more: keep the role it had.
                known = latest.get(pid, (role, 0.0))[0] if role == "gone" else role
                latest[pid] = (known, cpu_s)
        window_s = self.samples[-1][0] - self.samples[start][0]
        return cpu_breakdown(self.samples[start][1], latest), window_s
