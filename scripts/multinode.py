"""A real multi-node Ray cluster on one machine: a worker node killed under load, a worker
node killed mid Ray Data job, the head node killed with GCS fault tolerance.

Three ``ray start --block`` nodes, each its own raylet and object store, each in a
process group of its own: a head (``--num-cpus 0``: no replica lands there; GCS backed by
a ``redis-server`` this script starts, ``RAY_REDIS_ADDRESS``) and two worker nodes with a
custom resource ``mn_worker`` that every replica asks for. The app is ``serve deploy`` of
``ray_configs/serve.yaml`` with ``proxy_location: EveryNode``, two replicas of the
ingress, the VAD and the recognizer (small ``num_cpus``: 2 cores); worker proxies get
ports of their own (``RAY_SERVE_WORKER_PROXY_HTTP_PORT`` in the worker node's
environment: one machine, one port per proxy). Drills:

- ``node``: clients post real speech (espeak-ng) through the head's proxy in a loop; one
  worker node is killed whole (SIGKILL of its process group: ``ray start``, raylet, every
  worker process). Counted: requests sent / failed at the first attempt / shed (503 with
  Retry-After: admission said "later") or lost after the client's own retries (2, on a
  connection error or a 5xx, waiting as OpenAI's SDK does), wrong text; the seconds
  until every deployment has its replicas RUNNING on the surviving node.
  The killed node is started again afterwards.
- ``head``: the head node (GCS, Serve controller, head proxy) is killed; the clients post
  through the worker nodes' proxies while it is down; the head is started again on the
  same Redis. Counted: answers while it was down, whether the replicas are the same ones
  after (the app intact, not redeployed), the seconds until the app is RUNNING again.
- ``job``: the Serve app is deleted, the Ray Data job (``serve_app.batch.job``) runs as a
  driver on the cluster, and the worker node holding a recognizer actor is killed once the
  first part file is written. Counted: rows, ids, statuses.

    python -m scripts.multinode                       # every drill, ~10 min on 2 cores
    python -m scripts.multinode --drills node --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

from scripts.common.audio import SpokenFile, require_espeak, sentence_file
from scripts.common.http import Answer, send
from scripts.common.local_cluster import Cluster, Node, serve_config
from scripts.common.service import REPO, healthy, stop_group, wait_until
from serve_app.tools.speech import SENTENCES

DRILLS = ("node", "head", "job")


# -- the load -----------------------------------------------------------------------------


@dataclass
class Request:
    """One request of a client, with the client's retries (each an Answer)."""

    t_start_s: float
    url: str
    attempts: list[Answer] = field(default_factory=list)
    done: bool = False

    @property
    def first_ok(self) -> bool:
        return bool(self.attempts) and self.attempts[0].ok

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].ok


def _backoff_s(answer: Answer, attempt: int, rng: random.Random) -> float:
    """As OpenAI's SDK waits before a retry: the answer's Retry-After when it gives one of
    at most 60 s, else 0.5 s doubling, jittered."""
    try:
        retry_after_s = float(answer.retry_after or "")
    except ValueError:
        retry_after_s = 0.0
    if 0 < retry_after_s <= 60:
        return retry_after_s
    return 0.5 * 2**attempt * rng.uniform(0.75, 1.25)


def _retryable(answer: Answer) -> bool:
    """What OpenAI's SDK retries (max_retries=2): no answer, 408, 409, 429, 5xx."""
    return answer.status in (0, 408, 409, 429) or answer.status >= 500


def words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() else " " for c in text).split()


def text_ok(answer: Answer, expected: str) -> bool:
    """At least 80% of the expected words, in any order (Whisper tiny on espeak)."""
    want, got = words(expected), set(words(answer.text))
    return bool(want) and sum(w in got for w in want) >= 0.8 * len(want)


class Load:
    """``clients`` clients posting ``file`` in a loop, round-robin over ``urls``, in a thread."""

    def __init__(self, file: SpokenFile, retries: int = 2, timeout_s: float = 300) -> None:
        self.file, self.retries, self.timeout_s = file, retries, timeout_s
        self.urls: list[str] = []
        self.requests: list[Request] = []
        self.running = False
        self.t0 = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._tasks: list = []

    def start(self, clients: int, urls: list[str]) -> None:
        self.urls, self.running = list(urls), True
        if not self._thread.is_alive():
            self._thread.start()
        self._tasks = [
            asyncio.run_coroutine_threadsafe(self._client(i), self._loop) for i in range(clients)
        ]

    def stop(self, timeout_s: float = 300) -> None:
        self.running = False
        for task in self._tasks:
            with contextlib.suppress(Exception):
                task.result(timeout_s)
        self._tasks = []

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _client(self, index: int) -> None:
        rng = random.Random(index)
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            n = index
            while self.running:
                url = self.urls[n % len(self.urls)]
                n += 1
                request = Request(time.monotonic() - self.t0, url)
                self.requests.append(request)
                for attempt in range(self.retries + 1):
                    answer = Answer(time.monotonic() - self.t0)
                    form = {"cache": "false"}  # the same file each time: no cached answers
                    request.attempts.append(await send(http, url, self.file, answer, form, self.t0))
                    if answer.ok and not text_ok(answer, self.file.text):
                        answer.error = f"wrong text: {answer.text[:80]!r}"
                    if answer.ok or not _retryable(answer) or attempt == self.retries:
                        break
                    await asyncio.sleep(_backoff_s(answer, attempt, rng))
                request.done = True

    def count(
        self, since_s: float = 0.0, until_s: float = float("inf"), *, at: float | None = None
    ) -> dict:
        """Requests that started in [since_s, until_s) and are done; with ``at``, only
        those whose first attempt was still in flight at ``at``. First attempts are ok, shed
        (503 with Retry-After: admission said "later") or failed (anything else)."""
        rs = [r for r in self.requests if r.done and since_s <= r.t_start_s < until_s]
        if at is not None:
            rs = [r for r in rs if r.attempts[0].t_end_s >= at]
        firsts = [r.attempts[0] for r in rs]
        failures = sorted(
            {f"{a.outcome}: {a.error[:100]}" for r in rs for a in r.attempts if not a.ok}
        )
        return {
            "sent": len(rs),
            "ok_first_attempt": sum(a.ok for a in firsts),
            "shed_first_attempt": sum(a.rejected for a in firsts),
            "failed_first_attempt": sum(a.failed for a in firsts),
            # Still a 503 with Retry-After after the client's retries: told to come back
            # later (admission on a machine that lost half its replicas), not lost.
            "shed_after_client_retries": sum(r.attempts[-1].rejected for r in rs),
            "lost_after_client_retries": sum(not r.ok and not r.attempts[-1].rejected for r in rs),
            "failures": failures[:6],
        }

    def now(self) -> float:
        return time.monotonic() - self.t0


def speech() -> SpokenFile:
    with tempfile.TemporaryDirectory() as tmp:
        return sentence_file(Path(tmp), "speech.wav", SENTENCES[1:3], pause_s=0.8)


# -- the drills ---------------------------------------------------------------------------


def settled(cluster: Cluster, replicas: int, on: list[Node]) -> bool:
    """The app RUNNING, every deployment with ``replicas`` RUNNING replicas, all on ``on``."""
    status = cluster.app_status()
    if status == "DEPLOY_FAILED":
        raise RuntimeError(f"the app failed to deploy; see {cluster.temp_dir}")
    if status != "RUNNING":
        return False
    layout = cluster.layout()
    names = {n.name for n in on}
    return bool(layout) and all(
        sum(per_node.values()) == replicas and set(per_node) <= names
        for per_node in layout.values()
    )


def node_drill(cluster: Cluster, load: Load, args: argparse.Namespace) -> dict:
    victim = cluster.workers[-1]
    survivors = cluster.workers[:-1]
    layout_before = cluster.layout()
    load.start(args.clients, [cluster.head.url])
    time.sleep(args.warmup_s)
    t_kill = load.now()
    in_flight = sum(not r.done for r in load.requests)
    killed = victim.kill()
    print(f"node: killed {victim.name} ({killed} processes), {in_flight} requests in flight")
    healthy_s = wait_until(
        lambda: settled(cluster, args.replicas, survivors), args.recover_timeout_s,
        "the replicas on the surviving node", period_s=0.5,
    )  # fmt: skip
    print(f"node: every replica RUNNING on the surviving node after {healthy_s:.1f} s")
    time.sleep(args.after_s)
    load.stop()
    out = {
        "killed": victim.name,
        "processes_killed": killed,
        "seconds_to_healthy": round(healthy_s, 1),
        "layout_before": layout_before,
        "layout_after": cluster.layout(),
        "started_before_kill": load.count(0, t_kill),
        "in_flight_at_kill": load.count(0, t_kill, at=t_kill),
        "started_after_kill": load.count(t_kill),
        "segment_retries_logged": retries_logged(cluster),
    }
    return out


def head_drill(cluster: Cluster, load: Load, args: argparse.Namespace) -> dict:
    worker_urls = [n.url for n in cluster.workers if healthy(n.url)]
    if not worker_urls:
        return {"error": "no worker node proxy answers /healthz before the head kill"}
    ids_before = {d: sorted(r["replica_id"] for r in rs) for d, rs in cluster.replicas().items()}
    t_begin = load.now()
    load.start(args.clients, worker_urls)
    time.sleep(args.warmup_s)
    t_kill = load.now()
    killed = cluster.head.kill()
    print(f"node: killed the head ({killed} processes); clients on {worker_urls}")
    # The proxy's own health route, and the app's (which asks the VAD and the recognizers
    # and answers 503 after 5 s behind a busy recognizer's queue, head or no head).
    probes: dict[str, list[bool]] = {}
    down_until = time.monotonic() + args.head_down_s
    while time.monotonic() < down_until:
        for u in worker_urls:
            for path in ("/-/healthz", "/healthz"):
                probes.setdefault(u + path, []).append(healthy(u, path))
        time.sleep(2)
    t_restart = load.now()
    restart_error = cluster.restart_head()
    back_s = wait_until(
        lambda: cluster.app_status() == "RUNNING", args.recover_timeout_s, "the app after the head"
    )
    print(f"head: down {t_restart - t_kill:.0f} s; app RUNNING {back_s:.1f} s after the restart")
    wait_until(lambda: healthy(cluster.head.url), 120, "the head proxy")
    time.sleep(args.after_s)
    load.stop()
    ids_after = {d: sorted(r["replica_id"] for r in rs) for d, rs in cluster.replicas().items()}
    return {
        "worker_proxies": worker_urls,
        "head_down_s": round(t_restart - t_kill, 1),
        "seconds_to_app_running_after_restart": round(back_s, 1),
        "health_probes_while_down": probes,
        "while_head_down": load.count(t_kill, t_restart),
        "after_restart": load.count(t_restart),
        "before_kill": load.count(t_begin, t_kill),
        "same_replicas_after": ids_before == ids_after,
        "replicas_before": ids_before,
        "replicas_after": ids_after,
        "head_proxy_healthy_after": healthy(cluster.head.url),
        "restart_error_first_try": restart_error,
    }


def job_drill(cluster: Cluster, args: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq

    from scripts.common.audio import sentence_files

    cluster.serve("deploy", str(args.workdir / "empty.yaml"))
    wait_until(lambda: cluster.app_status() is None, 300, "the app's deletion")
    audio = args.workdir / "job_audio"
    audio.mkdir(exist_ok=True)
    rows = []
    for f in sentence_files(audio, args.job_files, 2):
        (audio / f.name).write_bytes(f.wav)
        rows.append({"id": f.name.removesuffix(".wav"), "audio": str(audio / f.name)})
    import pyarrow as pa

    manifest, out = args.workdir / "manifest.parquet", args.workdir / "job_out"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    job_cfg = yaml.safe_load((REPO / "ray_configs" / "batch_cpu.yaml").read_text())
    job_cfg["job"].update(
        decode_vad_pool={"min_size": 1, "max_size": 1, "num_cpus": 0.5},
        recognizer_pool={"min_size": 2, "max_size": 2, "num_cpus": 0.5},
        files_per_recognizer_batch=1,
    )
    cfg_path = args.workdir / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(job_cfg))
    summary = args.workdir / "job_summary.json"
    driver = subprocess.Popen(
        [sys.executable, "-m", "serve_app.batch.job", "--address", f"127.0.0.1:{cluster.gcs_port}",
         "--manifest", str(manifest), "--output", str(out), "--config", str(cfg_path),
         "--summary-json", str(summary)],
        cwd=REPO, env={**cluster.env, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
        stdout=(args.workdir / "job.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    killed, rows_at_kill = None, 0
    try:
        deadline = time.monotonic() + args.job_timeout_s
        while driver.poll() is None and time.monotonic() < deadline:
            parts = list(out.glob("*.parquet")) if out.exists() else []
            if killed is None and parts:
                holders = [n for n in cluster.workers if _has_actor(n, "RecognizeStage")]
                if holders:
                    with contextlib.suppress(Exception):
                        rows_at_kill = pq.read_table(out).num_rows
                    killed = holders[-1].name
                    n = holders[-1].kill()
                    print(f"job: killed {killed} ({n} processes) at {rows_at_kill} rows written")
            time.sleep(0.2)
        driver.wait(max(1.0, deadline - time.monotonic()))
    finally:
        stop_group(driver, signal.SIGTERM, 30)
    table = pq.read_table(out).to_pylist() if out.exists() else []
    ids = [r["id"] for r in table]
    result = {
        "files": len(rows),
        "killed": killed,
        "rows_at_kill": rows_at_kill,
        "driver_rc": driver.returncode,
        "rows": len(table),
        "distinct_ids": len(set(ids)),
        "missing_ids": sorted({r["id"] for r in rows} - set(ids)),
        "statuses": {s: sum(r["status"] == s for r in table) for s in {r["status"] for r in table}},
        "empty_text": sum(not (r["text"] or "").strip() for r in table),
    }
    if summary.exists():
        result["summary"] = json.loads(summary.read_text())
    if driver.returncode:
        log = (args.workdir / "job.log").read_text(errors="replace")
        result["driver_log_tail"] = log[-3000:]
    return result


def retries_logged(cluster: Cluster) -> int:
    """Stage calls the ingress replicas sent again (serve_app.online.retry's warning, in
    the workers' stderr logs)."""
    n = 0
    for log in cluster.temp_dir.glob("session_*/logs/worker-*.err"):
        n += log.read_text(errors="replace").count("retrying in")
    return n


def _has_actor(node: Node, fragment: str) -> bool:
    for pid in node.pids():
        with contextlib.suppress(psutil.Error):
            if fragment in " ".join(psutil.Process(pid).cmdline()):
                return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drills", nargs="+", choices=DRILLS, default=list(DRILLS))
    parser.add_argument("--config", type=Path, default=REPO / "ray_configs" / "serve.yaml")
    parser.add_argument("--http-port", type=int, default=8300, help="the head's proxy")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2, help="of each deployment")
    parser.add_argument(
        "--worker-cpus", type=float, default=3, help="Ray CPUs of a worker node: one holds all"
    )
    parser.add_argument("--warmup-s", type=float, default=20)
    parser.add_argument("--after-s", type=float, default=20, help="load after recovery")
    parser.add_argument("--head-down-s", type=float, default=30)
    parser.add_argument("--recover-timeout-s", type=float, default=300)
    parser.add_argument("--job-files", type=int, default=16)
    parser.add_argument("--job-timeout-s", type=float, default=600)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    require_espeak()
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mn_", dir="/tmp"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    cfg = serve_config(args.config, args.http_port, args.replicas)
    (args.workdir / "serve.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    empty = {k: cfg[k] for k in ("proxy_location", "http_options")} | {"applications": []}
    (args.workdir / "empty.yaml").write_text(yaml.safe_dump(empty))
    print(f"logs and configs in {args.workdir}")

    cluster = Cluster(args.workdir, args.http_port, 2, args.worker_cpus)
    load = Load(speech())
    figures: dict = {"machine_cpus": os.cpu_count(), "clients": args.clients}
    started = time.monotonic()
    try:
        t0 = time.monotonic()
        cluster.start()
        print(f"cluster: head + {len(cluster.workers)} workers up in {time.monotonic() - t0:.1f} s")
        if {"node", "head"} & set(args.drills):
            t0 = time.monotonic()
            cluster.serve("deploy", str(args.workdir / "serve.yaml"))
            wait_until(lambda: settled(cluster, args.replicas, cluster.workers), 600, "the app")
            wait_until(lambda: all(healthy(n.url) for n in cluster.nodes), 120, "every proxy")
            figures["deploy_s"] = round(time.monotonic() - t0, 1)
            figures["layout"] = cluster.layout()
            print(f"deploy: RUNNING, every proxy healthy after {figures['deploy_s']} s")
            print(f"deploy: replicas per node {figures['layout']}")
        for i, drill in enumerate(args.drills):
            if drill == "node":
                figures["node_kill"] = node_drill(cluster, load, args)
                if i + 1 < len(args.drills):  # back to two workers for the next drills
                    cluster.start_worker(cluster.workers[-1])
            elif drill == "head":
                figures["head_kill"] = head_drill(cluster, load, args)
            else:
                figures["job_node_kill"] = job_drill(cluster, args)
            print(f"{drill}: {json.dumps(figures[_key(drill)], indent=1)}")
    finally:
        load.close()
        cluster.stop()
    figures["wall_s"] = round(time.monotonic() - started, 1)
    figures["passed"] = passed(figures)
    print(f"multinode: {'PASSED' if figures['passed'] else 'FAILED'} in {figures['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["passed"] else 1


def _key(drill: str) -> str:
    return {"node": "node_kill", "head": "head_kill", "job": "job_node_kill"}[drill]


def passed(figures: dict) -> bool:
    node = figures.get("node_kill")
    job = figures.get("job_node_kill")
    head = figures.get("head_kill")
    ok = True
    if node is not None:
        ok &= all(
            node[phase]["lost_after_client_retries"] == 0
            for phase in ("started_before_kill", "started_after_kill")
        )
    if job is not None:
        ok &= job["rows"] == job["distinct_ids"] == job["files"] and job["statuses"] == {
            "ok": job["files"]
        }
    if head is not None:
        ok &= head.get("same_replicas_after", False) and head["while_head_down"]["sent"] > 0
    return bool(ok)


if __name__ == "__main__":
    sys.exit(main())
