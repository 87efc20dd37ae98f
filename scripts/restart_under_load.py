"""Config updates and a graceful stop under load: nothing in flight may fail.

``serve run`` of a Serve config (default ``ray_configs/serve.yaml``) under a few clients
posting a short spoken file in a loop, through four phases: ``steady``; ``reconfigure``
(``serve deploy`` of a new ``user_config`` for the recognizer: Serve calls ``reconfigure``
on the running replica, whose actor id must not change); ``restart`` (a changed app
argument: every replica replaced, rolling); ``stop`` (the clients stop, then SIGTERM to
``serve run``, or ``--signal INT`` to its process group as Ctrl-C does; every request in
flight then must still be answered). ``--drain-first`` deploys a config with no
application before the signal: Ray 2.60's ``serve.shutdown()`` (Ctrl-C of ``serve run``)
kills the HTTP proxies at once, so answers still in flight never reach their clients;
deleting the app first drains them through live proxies.

Printed per phase and per event (the requests in flight at it): sent / ok / shed (503 with
Retry-After) / failed, and the seconds from the signal to the exit of ``serve run``.
``--cluster head`` (default) serves on ``ray start --head --block`` (so ``serve deploy``
knows the dashboard); ``--cluster local`` lets ``serve run`` start its own Ray.

    python -m scripts.restart_under_load --clients 3 --phase-s 20
    python -m scripts.restart_under_load --cluster local --signal INT
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from scripts.common.audio import SpokenFile, sentence_file
from scripts.common.http import Answer, LoopedLoad
from scripts.common.service import (
    BIN,
    RAY_ENV,
    REPO,
    free_port,
    free_ports,
    get_json,
    group_pids,
    healthy,
    serve_application,
    stop_group,
    wait_until,
)
from scripts.common.service import serve_run as start_serve_run
from serve_app.tools.speech import SENTENCES

PHASES = ("steady", "reconfigure", "restart", "stop")


def speech_file() -> SpokenFile:
    with tempfile.TemporaryDirectory() as tmp:
        return sentence_file(Path(tmp), "speech.wav", SENTENCES[1:3], pause_s=0.8)


def configs(path: Path, port: int, wait_s: float | None) -> dict[str, dict]:
    """The base config (on ``port``) and the two updates."""
    base = yaml.safe_load(path.read_text())
    base["http_options"]["port"] = port
    (app,) = base["applications"]
    recognizer = app["args"]["recognizers"][0]
    name = f"Recognizer-{recognizer['name']}"
    batch = recognizer.setdefault("batch", {})
    old_wait_s = float(batch.get("batch_wait_timeout_s", 0.05))
    reconfigured = copy.deepcopy(base)
    reconfigured["applications"][0].setdefault("deployments", []).append(
        {"name": name, "user_config": {"batch_wait_timeout_s": wait_s or 2 * old_wait_s}}
    )
    restarted = copy.deepcopy(reconfigured)
    rec = restarted["applications"][0]["args"]["recognizers"][0]
    rec["batch"]["max_batch_items"] = max(1, int(rec["batch"].get("max_batch_items", 16)) - 4)
    # No application: Serve deletes the app, each replica draining its in-flight requests,
    # while the proxies stay up to deliver their answers.
    drained = {k: base[k] for k in ("proxy_location", "http_options") if k in base}
    drained["applications"] = []
    return {"base": base, "reconfigure": reconfigured, "restart": restarted, "drain": drained}


class Cluster:
    """The processes this script starts, each in its own session, stopped by pgid."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.env = {**os.environ, **RAY_ENV, "RAY_TMPDIR": str(workdir)}
        self.head: subprocess.Popen | None = None
        self.gcs_address = "local"
        self.dashboard_url: str | None = None

    def start_head(self, num_cpus: int | None) -> None:
        if self.kind != "head":
            return
        gcs_port, dash_port = free_ports(2)
        cmd = [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}", f"--dashboard-port={dash_port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", "--disable-usage-stats",
            *([f"--num-cpus={num_cpus}"] if num_cpus else []),
        ]  # fmt: skip
        log = open(self.workdir / "ray_head.log", "wb")
        self.head = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.gcs_address = f"127.0.0.1:{gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{dash_port}"
        wait_until(lambda: get_json(f"{self.dashboard_url}/api/version"), 180, "dashboard")

    def find_dashboard(self, timeout_s: float) -> None:
        if self.dashboard_url:
            return

        def parse() -> bool:
            text = (self.workdir / "serve_run.log").read_text(errors="replace")
            found = re.search(r"dashboard at \S*?(127\.0\.0\.1:\d+|localhost:\d+)", text)
            if found:
                self.dashboard_url = "http://" + found.group(1)
            return bool(found)

        wait_until(parse, timeout_s, "the dashboard address in serve run's log")

    def deploy(self, config: Path) -> None:
        subprocess.run(
            [str(BIN / "serve"), "deploy", "--address", str(self.dashboard_url), str(config)],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def replicas(self) -> dict[str, set[str]]:
        """Deployment -> ids of its RUNNING replicas."""
        app = serve_application(str(self.dashboard_url)) or {}
        return {
            name: {r["replica_id"] for r in d["replicas"] if r["state"] == "RUNNING"}
            for name, d in app.get("deployments", {}).items()
        }

    def app_status(self) -> str | None:
        app = serve_application(str(self.dashboard_url))
        return app["status"] if app else None

    def stop_head(self) -> float | None:
        """Stop ``ray start --block`` (it stops what it started); seconds it took."""
        if self.head is None:
            return None
        started = time.monotonic()
        stop_group(self.head, signal.SIGTERM, 60)
        return time.monotonic() - started


def report(load: LoopedLoad, events: dict[str, list[Answer]]) -> list[str]:
    """Per phase (requests by the phase they started in) and per event (requests in flight
    at that moment): sent, ok, shed (503 + Retry-After), failed."""
    lines = [f"{'':<26} {'sent':>5} {'ok':>5} {'shed':>5} {'failed':>6}  failures"]

    def row(label: str, answers: list[Answer]) -> str:
        n = {k: sum(a.verdict == k for a in answers) for k in ("ok", "shed", "failed")}
        kinds = sorted({f"{a.outcome}: {a.error[:70]}" for a in answers if a.verdict == "failed"})
        return (
            f"{label:<26} {len(answers):>5} {n['ok']:>5} {n['shed']:>5} {n['failed']:>6}  "
            f"{kinds[:3] if kinds else ''}"
        )

    for phase in PHASES:
        lines.append(row(f"phase {phase}", [a for a in load.answers if a.kind == phase]))
    for event, answers in events.items():
        lines.append(row(f"in flight at {event}", answers))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "ray_configs" / "serve.yaml")
    parser.add_argument("--cluster", choices=("head", "local"), default="head")
    parser.add_argument("--signal", choices=("TERM", "INT"), default="TERM")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--phase-s", type=float, default=20.0, help="load after each step")
    parser.add_argument("--num-cpus", type=int, default=None, help="head node CPUs")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: free)")
    parser.add_argument(
        "--drain-first",
        action="store_true",
        help="before the signal, serve deploy a config with no application (a graceful stop)",
    )
    parser.add_argument("--new-batch-wait-s", type=float, default=None)
    parser.add_argument("--startup-timeout-s", type=float, default=600.0)
    parser.add_argument("--exit-timeout-s", type=float, default=180.0)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="restart_under_load_"))
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    paths = {}
    for name, cfg in configs(args.config, port, args.new_batch_wait_s).items():
        paths[name] = workdir / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"logs and configs in {workdir}; service at {url}")

    cluster = Cluster(args.cluster, workdir)
    serve_run: subprocess.Popen | None = None
    load: LoopedLoad | None = None
    events: dict[str, list[Answer]] = {}

    def mark(event: str, phase: str | None = None) -> None:
        """The requests in flight at ``event`` (they must all succeed); with ``phase``,
        counted in that phase from now on."""
        events[event] = load.in_flight() if load is not None else []
        for answer in events[event] if phase else ():
            answer.kind = phase

    code = 1
    try:
        cluster.start_head(args.num_cpus)
        started = time.monotonic()
        serve_run = start_serve_run(
            paths["base"], port, workdir, address=cluster.gcs_address,
            timeout_s=args.startup_timeout_s,
        )  # fmt: skip
        print(f"serve run: healthy after {time.monotonic() - started:.1f} s")
        cluster.find_dashboard(60)
        load = LoopedLoad(url, [speech_file()], timeout_s=300, require_text=True)
        load.phase = "steady"
        load.start_background(args.clients)
        time.sleep(args.phase_s)

        before = cluster.replicas()
        load.phase = "reconfigure"
        t0 = time.monotonic()
        mark("reconfigure")
        cluster.deploy(paths["reconfigure"])
        time.sleep(2)
        wait_until(lambda: cluster.app_status() == "RUNNING", 300, "reconfigure")
        print(f"reconfigure: RUNNING after {time.monotonic() - t0:.1f} s")
        time.sleep(args.phase_s)
        after = cluster.replicas()
        restarted = sorted(d for d in before if before[d] != after.get(d))
        print(f"reconfigure: replicas replaced: {restarted or 'none'}")

        load.phase = "restart"
        t0 = time.monotonic()
        mark("restart")
        cluster.deploy(paths["restart"])

        def all_replaced() -> bool:
            now = cluster.replicas()
            return cluster.app_status() == "RUNNING" and all(
                now.get(d) and not (now[d] & after[d]) for d in after
            )

        wait_until(all_replaced, args.startup_timeout_s, "the restart update", period_s=2)
        print(f"restart: every replica replaced, RUNNING after {time.monotonic() - t0:.1f} s")
        time.sleep(args.phase_s)

        load.phase = "stop"
        load.stop_sending()
        time.sleep(0.5)  # let each client's next request start or not; none start after
        if args.drain_first:
            mark("drain", phase="stop")
            t0 = time.monotonic()
            cluster.deploy(paths["drain"])
            wait_until(lambda: cluster.app_status() is None, 700, "the app's deletion")
            print(f"drain: app deleted, in-flight requests done, {time.monotonic() - t0:.1f} s")
        mark("signal", phase="stop")
        in_flight = len(events["signal"])
        t0 = time.monotonic()
        if args.signal == "TERM":
            serve_run.send_signal(signal.SIGTERM)
        else:
            os.killpg(serve_run.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        try:
            serve_run.wait(args.exit_timeout_s)
            exit_s = time.monotonic() - t0
            what = "SIGTERM" if args.signal == "TERM" else "Ctrl-C"
            print(f"stop: {what} -> exit of serve run {exit_s:.1f} s (rc {serve_run.returncode})")
        except subprocess.TimeoutExpired:
            print(f"stop: serve run still running {args.exit_timeout_s:.0f} s after the signal")
        load.stop_background(120)
        left = group_pids(serve_run.pid)
        if left:
            names = subprocess.run(
                ["ps", "-o", "pid=,args=", "-p", ",".join(map(str, left))],
                capture_output=True,
                text=True,
            ).stdout
            print("stop: left in serve run's group:\n" + names[:2000])
        all_gone_s = time.monotonic() - t0
        print(
            f"stop: {in_flight} requests in flight at the signal; processes of serve run's "
            f"group left: {len(left)} ({all_gone_s:.1f} s after the signal)"
        )
        print(f"stop: service answers after stop: {healthy(url)}")
        print("\n".join(report(load, events)))
        in_flight_failed = [a for answers in events.values() for a in answers if not a.ok]
        failed = [a for a in load.answers if a.verdict == "failed"]
        code = 0 if not failed and not in_flight_failed else 1
    finally:
        if load is not None:
            load.stop_background(120)
        if serve_run is not None:
            stop_group(serve_run, signal.SIGINT, 60)
        head_s = cluster.stop_head()
        if head_s is not None:
            print(f"ray head stopped in {head_s:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
