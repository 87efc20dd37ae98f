"""Live sessions at real-time pace: how many a service holds, batched and serialised.

N sessions (``--sessions 1,4,8,16``) stream espeak-ng sentences with pauses (each session
its own order) in 100 ms PCM16 chunks at real-time pace over ``/v1/realtime`` (OpenAI's
protocol, server VAD, partials on), all connected at once, each starting to speak after a
random 0-4 s (``--stagger-s``; 0 puts every session in step: a burst of N finals at once).
Per N it prints: final latency p50/p95 (from the true end of a sentence's speech to its
``completed``, the turn's silence included), ``stopped_p50_s`` (the same to its
``speech_stopped``: the part before recognition), first-partial latency p50 (from the true
start), partials per second of speech, WER of the finals against the spoken text, failed
items, and the busiest recognizer's forwards (count, items per forward, busy seconds:
``/v1/stats``), the cores each role of the service used (``cpu_<role>``, the roles of
``scripts.bench``: replicas summed, this script as its clients) and the ingress's RSS
growth per session (its peak during the row over its RSS before, per session).

Modes: ``batched`` deploys the app as configured (``--config``, default
``ray_configs/serve.yaml``); ``serial`` deploys it with every recognizer at
``max_batch_items: 1`` and one replica holding the threads of all of them (one utterance
at a time: how servers that decode each session on its own serve them). Both on a local
cluster this script starts (a config that cannot be placed fails at once, naming the
deployment); ``--url`` measures a running service instead (one mode).

    python -m scripts.live_bench [--sessions 1,4,8,16] [--modes batched,serial]
        [--seconds 40] [--config ray_configs/serve.yaml] [--model NAME] [--url URL]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import websockets
import yaml

from scripts.bench.measure import cpu_breakdown, cpu_by_process
from scripts.common.audio import require_espeak
from scripts.common.http import percentile, service_stats
from scripts.common.service import deploy_local, rss_mb, service_processes, shutdown_local
from serve_app.core.evaluation import word_error_rate
from serve_app.tools.speech import SAMPLE_RATE_HZ, SENTENCES, synthesize

CHUNK_S = 0.1
PAUSE_S = 1.2
TRANSCRIPTION = "conversation.item.input_audio_transcription"


@dataclass
class Stream:
    """One session's audio and where each sentence's speech starts and ends (s)."""

    samples: np.ndarray
    texts: list[str]
    spans_s: list[tuple[float, float]]


def speech_extent_s(clip: np.ndarray) -> tuple[float, float]:
    """Where the speech in a clip starts and ends (s): its first and last sample above 2 %
    of its peak. espeak-ng ends every clip with ~0.4 s of silence; counted as speech, it
    made every final latency ~0.4 s too short."""
    loud = np.flatnonzero(np.abs(clip) > 0.02 * float(np.abs(clip).max() or 1.0))
    if not len(loud):
        return 0.0, 0.0
    return loud[0] / SAMPLE_RATE_HZ, (loud[-1] + 1) / SAMPLE_RATE_HZ


def make_stream(
    rng: random.Random, clips: list[tuple[str, np.ndarray]], seconds: float, stagger_s: float = 0.0
) -> Stream:
    """Sentences with pauses after 0.5 s of silence plus a random lead of up to
    ``stagger_s`` (sessions that start together but not in step)."""
    lead_s = 0.5 + rng.uniform(0.0, stagger_s)
    parts, texts, spans, t = [np.zeros(int(lead_s * SAMPLE_RATE_HZ), np.float32)], [], [], lead_s
    while t < seconds:
        text, clip = rng.choice(clips)
        parts += [clip, np.zeros(int(PAUSE_S * SAMPLE_RATE_HZ), np.float32)]
        texts.append(text)
        start_s, end_s = speech_extent_s(clip)
        spans.append((t + start_s, t + end_s))
        t += len(clip) / SAMPLE_RATE_HZ + PAUSE_S
    return Stream(np.concatenate(parts), texts, spans)


@dataclass
class SessionResult:
    final_latency_s: list[float] = field(default_factory=list)
    stopped_latency_s: list[float] = field(default_factory=list)  # to speech_stopped
    first_partial_s: list[float] = field(default_factory=list)
    partials: int = 0
    failed: int = 0
    hypotheses: list[str] = field(default_factory=list)


def nearest(spans: list[tuple[float, float]], at_s: float, which: int) -> int:
    return min(range(len(spans)), key=lambda i: abs(spans[i][which] - at_s))


async def run_session(url: str, stream: Stream, model: str | None = None) -> SessionResult:
    result = SessionResult()
    pcm = (np.clip(stream.samples, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * SAMPLE_RATE_HZ) * 2
    started_at: dict[str, int] = {}
    stopped: dict[str, int] = {}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()
        session = {
            "type": "transcription",
            "include": ["item.input_audio_transcription.partial"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
        }
        if model:
            session["audio"]["input"]["transcription"] = {"model": model}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        t0 = time.monotonic()

        async def send() -> None:
            for i, pos in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, t0 + i * CHUNK_S - time.monotonic()))
                chunk = base64.b64encode(pcm[pos : pos + step]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))

        sender = asyncio.ensure_future(send())
        done = 0
        while done < len(stream.texts):
            try:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            except TimeoutError:
                break
            now = time.monotonic() - t0
            kind = event["type"]
            if kind == "input_audio_buffer.speech_started":
                started_at[event["item_id"]] = event["audio_start_ms"]
            elif kind == f"{TRANSCRIPTION}.partial":
                result.partials += 1
                if event["item_id"] in started_at:
                    begin = started_at.pop(event["item_id"]) / 1000
                    start = stream.spans_s[nearest(stream.spans_s, begin, 0)][0]
                    result.first_partial_s.append(now - start)
            elif kind == f"{TRANSCRIPTION}.completed":
                done += 1
                result.hypotheses.append(event["transcript"])
                end_ms = stopped.pop(event["item_id"], None)  # from speech_stopped
                if end_ms is not None:
                    end = stream.spans_s[nearest(stream.spans_s, end_ms / 1000, 1)][1]
                    result.final_latency_s.append(now - end)
            elif kind == "input_audio_buffer.speech_stopped":
                stopped[event["item_id"]] = event["audio_end_ms"]
                end = stream.spans_s[nearest(stream.spans_s, event["audio_end_ms"] / 1000, 1)][1]
                result.stopped_latency_s.append(now - end)
            elif kind.endswith(".failed") or kind == "error":
                result.failed += 1
                done += kind.endswith(".failed")
        sender.cancel()
    return result


async def measure(url: str, streams: list[Stream], model: str | None = None) -> dict:
    results = await asyncio.gather(*(run_session(url, s, model) for s in streams))
    finals = [x for r in results for x in r.final_latency_s]
    partial = [x for r in results for x in r.first_partial_s]
    speech_s = sum(e - b for s in streams for b, e in s.spans_s)
    refs = [" ".join(s.texts) for s in streams]
    hyps = [" ".join(r.hypotheses) for r in results]
    return {
        "sessions": len(streams),
        "final_p50_s": percentile(finals, 50),
        "final_p95_s": percentile(finals, 95),
        # How much of it is the turn's end reaching the client (silence, VAD, ingress).
        "stopped_p50_s": percentile([x for r in results for x in r.stopped_latency_s], 50),
        "first_partial_p50_s": percentile(partial, 50),
        "partials_per_speech_s": sum(r.partials for r in results) / speech_s,
        "wer": word_error_rate(refs, hyps),
        "finals": len(finals),
        "failed": sum(r.failed for r in results),
    }


def recognizer_totals(url: str) -> dict[str, dict]:
    """Per model: forwards, items, audio s and busy s so far, every replica summed
    (:func:`scripts.common.http.service_stats`: the live model runs two replicas)."""

    async def fetch() -> dict:
        async with httpx.AsyncClient(timeout=30) as http:
            return await service_stats(http, url, settle_s=1.5)

    keys = ("num_batches", "items", "audio_s", "busy_s")
    return {m: {k: float(s.get(k, 0)) for k in keys} for m, s in asyncio.run(fetch()).items()}


def forward_figures(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """The busiest recognizer's forwards during one row: count, items per forward, busy s."""
    deltas = {m: {k: after[m][k] - before.get(m, {}).get(k, 0.0) for k in after[m]} for m in after}
    model, d = max(deltas.items(), key=lambda kv: kv[1]["busy_s"])
    return {
        "model": model,
        "forwards": int(d["num_batches"]),
        "items_per_forward": d["items"] / d["num_batches"] if d["num_batches"] else 0.0,
        "busy_s": d["busy_s"],
    }


class RoleSampler:
    """Per role of the service (``scripts.bench.measure``'s roles): cores used during a row,
    and the ingress's peak RSS (sampled every 0.5 s)."""

    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        roles = service_processes(self.port)
        self.pids = [psutil.Process().pid, *roles]
        self.ingress = [pid for pid, label in roles.items() if label.endswith("Ingress")]
        self.rss_before_mb = sum(rss_mb(pid) or 0.0 for pid in self.ingress)
        self.peak_mb = self.rss_before_mb

    async def sample_rss(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, sum(rss_mb(pid) or 0.0 for pid in self.ingress))
            await asyncio.sleep(0.5)

    async def measure(self, work: Any) -> tuple[Any, dict]:
        cpu0, t0 = cpu_by_process(self.pids), time.monotonic()
        sampler = asyncio.ensure_future(self.sample_rss())
        try:
            result = await work
        finally:
            sampler.cancel()
        core_s = cpu_breakdown(cpu0, cpu_by_process(self.pids))
        wall_s = time.monotonic() - t0
        cores = {"cpu_" + role.replace(" ", "_"): s / wall_s for role, s in core_s.items()}
        return result, cores


async def measure_row(url: str, ws_url: str, streams: list[Stream], model: str | None) -> dict:
    sampler = RoleSampler(url)
    row, cores = await sampler.measure(measure(ws_url, streams, model))
    growth_mb = sampler.peak_mb - sampler.rss_before_mb
    return {**row, **cores, "ingress_mb_per_session": growth_mb / len(streams)}


def app_args(config: Path, serial: bool) -> dict:
    args = yaml.safe_load(config.read_text())["applications"][0]["args"]
    for recognizer in args["recognizers"]:
        if serial:
            # One decode at a time across all sessions, with every thread the model's
            # replicas had (how servers that decode each session on its own serve them).
            deployment = recognizer.setdefault("deployment", {})
            replicas = int(deployment.get("num_replicas", 1))
            threads = int(recognizer.get("cpu_threads") or 0)
            deployment["num_replicas"] = 1
            if threads:
                recognizer["cpu_threads"] = threads * replicas
            options = deployment.setdefault("ray_actor_options", {})
            if "num_cpus" in options:
                options["num_cpus"] = float(options["num_cpus"]) * replicas
            recognizer.setdefault("batch", {})["max_batch_items"] = 1
    args["ingress"].setdefault("deployment", {})["max_ongoing_requests"] = 256
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,4,8,16")
    parser.add_argument("--modes", default="batched,serial")
    parser.add_argument("--seconds", type=float, default=40.0, help="audio per session")
    parser.add_argument("--config", type=Path, default=Path("ray_configs/serve.yaml"))
    parser.add_argument(
        "--stagger-s",
        type=float,
        default=4.0,
        help="each session starts after a random 0..this s (one sentence and its pause: "
        "sessions not in step); 0 = all in step, every turn ends together",
    )
    parser.add_argument("--model", help="the sessions' transcription.model (default: the app's)")
    parser.add_argument("--url")
    parser.add_argument(
        "--haproxy", action="store_true", help="serve in Ray's HAProxy mode (run.py --haproxy)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    require_espeak()
    tmp = Path(tempfile.mkdtemp(prefix="live_bench_"))
    clips = [(text, synthesize(text, tmp)) for text in SENTENCES[:12]]
    counts = [int(n) for n in args.sessions.split(",")]
    rows = []
    for mode in [args.modes.split(",")[0]] if args.url else args.modes.split(","):
        url = args.url or deploy_local(
            app_args(args.config, mode == "serial"), name="live", haproxy=args.haproxy
        )
        ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
        try:
            for n in counts:
                rng = random.Random(args.seed + n)
                streams = [make_stream(rng, clips, args.seconds, args.stagger_s) for _ in range(n)]
                before = recognizer_totals(url)
                figures = asyncio.run(measure_row(url, ws_url, streams, args.model))
                row = {"mode": mode + ("+haproxy" if args.haproxy else ""), **figures}
                row.update(forward_figures(before, recognizer_totals(url)))
                rows.append(row)
                print(
                    " ".join(
                        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                    ),
                    flush=True,
                )
        finally:
            if not args.url:
                shutdown_local()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
