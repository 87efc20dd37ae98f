"""Autoscaling shown, not claimed: the recognizer's replicas going up under a load ramp and
back down after, within their bounds.

Deploys ``ray_configs/serve.yaml``'s CPU models (FSMN-VAD + Whisper tiny.en) on a local
Ray with an autoscaling recognizer (1-3 replicas of ``num_cpus: 0``, so three fit on two
cores; ``target_ongoing_requests`` = ``max_batch_items`` = 4: a replica holds one full
batch before Serve adds the next, the production rule at a small scale), ramps clients
posting a 3-sentence espeak-ng WAV through a fixed schedule, stops, and waits for the
scale-down. One line a second: clients, requests in flight / done / failed, what Serve's
autoscaler sees (``serve_autoscaling_total_requests`` and ``..._desired_replicas`` from
Ray's metrics endpoint) and the RUNNING replicas. About 4-6 minutes on 2 cores; exit 0
only if it scaled up, came back to its minimum and never left its bounds.

    python -m scripts.autoscale_demo [--max-clients 12] [--step-s 25]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# Before Ray is imported: every Ray process started from here inherits these.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
# Serve's autoscaling metrics are pushed every 10 s by default; 1 s lets a short demo
# react in seconds (production keeps the defaults).
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")
# Export metrics every second, so the timeline can show what Serve's autoscaler sees.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")

from scripts.common.audio import require_espeak, sentence_file
from scripts.common.http import LoopedLoad
from scripts.common.service import REPO, deploy_local, shutdown_local
from serve_app.tools.speech import SENTENCES

APP_NAME = "asr-autoscale-demo"
MIN_REPLICAS = 1
MAX_REPLICAS = 3
MAX_BATCH_ITEMS = 4
AUTOSCALING = {
    "min_replicas": MIN_REPLICAS,
    "max_replicas": MAX_REPLICAS,
    "target_ongoing_requests": MAX_BATCH_ITEMS,
    "upscale_delay_s": 3,
    "downscale_delay_s": 15,
    # Averaged over 11 s: Ray wants it above the (deprecated) 10 s metrics_interval_s.
    "look_back_period_s": 11,
}


def demo_app_config(models_dir: str | None) -> dict:
    """``ray_configs/serve.yaml``'s app args with an autoscaling recognizer, 0-CPU replicas."""
    import yaml

    raw = yaml.safe_load((REPO / "ray_configs" / "serve.yaml").read_text())
    args = raw["applications"][0]["args"]
    args["models_dir"] = models_dir
    zero_cpu = {"num_cpus": 0}
    args["vad_deployment"].update(ray_actor_options=zero_cpu, max_ongoing_requests=16)
    args["ingress"]["deployment"].update(ray_actor_options=zero_cpu)
    recognizer = args["recognizers"][0]
    recognizer["cpu_threads"] = 1  # three replicas share two cores
    recognizer["batch"].update(max_batch_items=MAX_BATCH_ITEMS, batch_wait_timeout_s=0.05)
    recognizer["deployment"] = {
        "num_replicas": "auto",
        # >= max_batch_items x max_concurrent_batches (AppConfig checks it).
        "max_ongoing_requests": 2 * MAX_BATCH_ITEMS,
        "ray_actor_options": zero_cpu,
        "autoscaling_config": AUTOSCALING,
    }
    return args


def metric_lines(metrics_url: str, timeout_s: float = 2) -> list[str]:
    """The lines of Ray's Prometheus endpoint ([] while it cannot be read)."""
    import urllib.request

    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
            return response.read().decode().splitlines()
    except OSError:
        return []


def autoscaler_view(metrics_url: str, deployment: str) -> tuple[str, str]:
    """(total requests, desired replicas) of ``deployment`` as Serve's autoscaler exported
    them last; "-" before the first export."""
    values = {}
    for line in metric_lines(metrics_url):
        for name in ("total_requests", "desired_replicas"):
            prefix = f"ray_serve_autoscaling_{name}{{"
            if line.startswith(prefix) and f'deployment="{deployment}"' in line:
                values[name] = f"{float(line.rsplit(' ', 1)[1]):.1f}"
    return values.get("total_requests", "-"), values.get("desired_replicas", "-")


def replica_counts(serve, deployment: str) -> dict[str, int]:
    app = serve.status().applications.get(APP_NAME)
    if app is None or deployment not in app.deployments:
        return {}
    states = app.deployments[deployment].replica_states
    return {str(getattr(state, "value", state)): n for state, n in states.items()}


async def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serve_app.config import AppConfig, resolve_models_dir

    models_dir = str(resolve_models_dir(None))
    config = AppConfig.model_validate(demo_app_config(models_dir))
    recognizer = f"Recognizer-{config.recognizers[0].name}"
    schedule = [c for c in (1, 2, 4, 8, args.max_clients) if c <= args.max_clients]

    require_espeak()
    with tempfile.TemporaryDirectory() as tmp:
        # Three spoken sentences with pauses: three VAD segments per request.
        audio = sentence_file(Path(tmp), "demo.wav", SENTENCES[:3], pause_s=0.8)
    print(f"# autoscale demo  {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(
        f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Ray {ray.__version__}"
    )
    print(f"# recognizer {recognizer}: autoscaling_config {AUTOSCALING}")
    print(
        f"#   batch max_batch_items {MAX_BATCH_ITEMS}, max_ongoing_requests "
        f"{config.recognizers[0].deployment.max_ongoing_requests}"
    )
    print(
        f"# load: {audio.duration_s:.1f} s WAV (3 sentences), clients {schedule}, "
        f"{args.step_s} s each"
    )
    started = time.monotonic()
    try:
        url = deploy_local(
            demo_app_config(models_dir), name=APP_NAME, num_cpus=2,
            timeout_s=args.deploy_timeout_s,
        )  # fmt: skip
    except (RuntimeError, TimeoutError) as exc:
        print(f"deploy failed: {exc}")
        return 2
    print(f"# deployed in {time.monotonic() - started:.0f} s; {url}")
    metrics_url = f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"
    print(
        f"{'t_s':>5} {'phase':>8} {'clients':>7} {'http':>4} {'done':>5} {'err':>3} "
        f"{'seen':>5} {'want':>4}  replicas"
    )
    print(
        "# http: requests in flight; seen / want: the recognizer's ongoing segments and "
        "desired replicas, as Serve's autoscaler last reported them"
    )

    load = LoopedLoad(url, [audio], form={"model": config.recognizers[0].name}, timeout_s=120)
    t0 = time.monotonic()
    max_running = 0
    out_of_bounds = False

    async def sample(phase: str) -> dict[str, int]:
        nonlocal max_running, out_of_bounds
        counts = await asyncio.to_thread(replica_counts, serve, recognizer)
        seen, want = await asyncio.to_thread(autoscaler_view, metrics_url, recognizer)
        running = counts.get("RUNNING", 0)
        max_running = max(max_running, running)
        out_of_bounds |= not MIN_REPLICAS <= running <= MAX_REPLICAS
        others = " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k != "RUNNING")
        t = time.monotonic() - t0
        print(
            f"{t:5.0f} {phase:>8} {load.clients:7d} {len(load.in_flight()):4d} "
            f"{load.count('ok'):5d} {load.count('failed'):3d} {seen:>5} {want:>4}  "
            f"RUNNING={running} {'#' * running}"
            f"{'  ' + others if others else ''}",
            flush=True,
        )
        return counts

    for clients in schedule:
        await load.set_clients(clients)
        step_end = time.monotonic() + args.step_s
        while time.monotonic() < step_end:
            await sample("ramp")
            await asyncio.sleep(1)
    await load.stop()
    scaled_down_at = None
    deadline = time.monotonic() + args.cooldown_timeout_s
    while time.monotonic() < deadline:
        counts = await sample("cooldown")
        if counts == {"RUNNING": MIN_REPLICAS}:
            scaled_down_at = time.monotonic() - t0
            break
        await asyncio.sleep(1)

    scaled_up = max_running > MIN_REPLICAS
    print(
        f"# summary: peak RUNNING={max_running} (bounds {MIN_REPLICAS}-{MAX_REPLICAS}), "
        f"requests done={load.count('ok')} errors={load.count('failed')}, "
        f"back to {MIN_REPLICAS} at t={scaled_down_at:.0f} s"
        if scaled_down_at is not None
        else f"# summary: peak RUNNING={max_running}, never scaled back down to {MIN_REPLICAS}"
    )
    for line in metric_names(metrics_url):
        print(line)
    serve.delete(APP_NAME)
    ok = scaled_up and scaled_down_at is not None and not out_of_bounds
    print(
        f"# result: {'OK' if ok else 'FAILED'} (scaled up: {scaled_up}, "
        f"scaled down: {scaled_down_at is not None}, within bounds: {not out_of_bounds})"
    )
    return 0 if ok else 1


def metric_names(metrics_url: str) -> list[str]:
    """The Prometheus names our metrics and Serve's get on this node's endpoint."""
    lines = metric_lines(metrics_url, timeout_s=10)
    names = {line.split("{")[0].split(" ")[0] for line in lines if line[:1] not in ("", "#")}
    names = sorted(names)
    ours = [n for n in names if "asr_" in n]
    serve_names = [n for n in names if "serve_" in n]
    return [
        f"# metrics on {metrics_url}: {len(ours)} asr_* series names: {' '.join(ours)}",
        f"# {len(serve_names)} serve_* names, e.g. {' '.join(serve_names[:12])}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-clients", type=int, default=12)
    parser.add_argument("--step-s", type=float, default=25.0, help="seconds per load step")
    parser.add_argument("--deploy-timeout-s", type=float, default=180.0)
    parser.add_argument("--cooldown-timeout-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    finally:
        shutdown_local()  # also on errors: the local cluster must not outlive the demo


if __name__ == "__main__":
    sys.exit(main())
