"""Batch-size tuner: find the "golden" batch capacity of a recognizer on this hardware.

Sweeps the recognizer's batch capacity over real VAD segments of the benchmark corpus
(:mod:`serve_app.tools.corpus`) through ``BatchedRecognizer``, the code Serve and Ray Data
run (sort by duration, pack forward passes by padded cost). Two axes:

- ``items`` (default for Whisper, which pads every item to a 30 s window, so the item
  count is what costs): ``max_batch_items`` = N, ``max_forward_audio_s`` = N x 30 s;
- ``seconds`` (default for FunASR, whose cost and memory follow padded audio):
  ``max_forward_audio_s`` = S under a fixed item cap.

``max_batch_audio_s`` (the dynamic batch) stays large (``--dynamic-s``) so each dynamic
batch holds many segments to sort. In the default ``serve`` mode, segments are grouped into
dynamic batches in arrival order, as Serve's recognizer forms them when its queue never
empties; ``offline`` sorts the whole workload at once (Ray Data, the benchmark's floor).

For each point it records throughput (seconds of speech per wall second) and peak memory:
GPU ``torch.cuda.max_memory_allocated`` (FunASR) or ``nvidia-smi`` (CTranslate2 Whisper,
whose allocations torch does not see); CPU the peak RSS of this process, sampled every
50 ms. It then picks the knee (:func:`pick_knee`: the smallest capacity within
``--tolerance`` of the best throughput among the points under the memory limit, i.e. the
memory this process may use minus ``--memory-headroom``) and writes a complete Serve
config: a copy of ``--template`` with the recognizer's ``batch`` section replaced (on CPU
also its thread count) and the sweep as a comment header. ``serve run`` accepts it:

    python -m serve_app.tools.tune_batch --model whisper-tiny.en   # -> ray_configs/tuned_cpu_*.yaml
    python -m serve_app.tools.tune_batch --model paraformer-large --device cuda --precision fp16
    serve run ray_configs/tuned_cpu_whisper-tiny.en.yaml

Points run in increasing size and a point over the memory limit (or out of memory) ends
the sweep. On CPU freed memory is not handed back, so each point's RSS is the peak so far.
``--probe-worst-case`` (default on CUDA) also runs, per point, the heaviest forward the
budget allows (full 30 s segments), since the workload may not contain one. The sweep's
measurement is :mod:`serve_app.tools.tune_sweep`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app.tools.tune_sweep import (
    WINDOW_S,
    SweepPoint,
    machine,
    measure,
    memory_limit_bytes,
    pick_knee,
    workload,
)

# The checkout's ray_configs/ hold the templates and receive the tuned configs.
REPO = Path(__file__).resolve().parents[2]

# Swept values: item caps (Whisper: every item costs a 30 s window, so the count is the
# knob) or forward budgets in seconds (FunASR: cost and memory follow padded audio).
DEFAULT_SWEEP = {
    ("cpu", "items"): (1, 2, 4, 8, 16),
    ("cuda", "items"): (8, 16, 32, 64, 128, 256),
    ("cpu", "seconds"): (15, 30, 60, 120, 240),
    ("cuda", "seconds"): (60, 120, 240, 480, 960, 1920),
}
# Item cap on the seconds axis, and the dynamic batch capacity: large enough that a dynamic
# batch holds many segments, which BatchedRecognizer sorts so each forward pads little.
DEFAULT_ITEM_CAP = {"cpu": 32, "cuda": 128}
DEFAULT_DYNAMIC_S = {"cpu": 480.0, "cuda": 960.0}
# Whisper computes every item as a full 30 s window, so segments are merged across pauses
# up to this long (while the result stays <= max_segment_s): fewer, fuller windows. 3 s
# keeps long silences (where Whisper tends to hallucinate) out of the windows.
DEFAULT_TEMPLATES = {
    "cpu": "ray_configs/serve.yaml",
    "cuda": "ray_configs/serve_paraformer_gpu.yaml",
}


def tuned_config(
    template: dict,
    *,
    recognizer: dict,
    batch: dict,
    replace_first: bool,
    cpu_threads: int | None = None,
    replicas: int = 1,
    cpus: float | None = None,
) -> dict:
    """``template`` (a Serve config) with ``recognizer``'s batch section set to ``batch``.

    The recognizer named like ``recognizer["name"]`` is updated; if there is none and
    ``replace_first``, the first recognizer is replaced by ``recognizer`` (keeping its
    aliases and deployment) and becomes the default model. ``cpu_threads`` (CPU tuning)
    gives the replica the threads the sweep ran with: Ray sets ``OMP_NUM_THREADS`` from
    ``num_cpus`` (1 thread for the usual ``num_cpus: 1``), and FunASR takes torch's thread
    count from it, so the replica's ``runtime_env`` sets it, and ``cpu_threads`` too.
    ``replicas`` > 1 (CPU): that many recognizer replicas of ``cpu_threads`` each, their
    ``num_cpus`` splitting what ingress and VAD leave of ``cpus``. On a node where those
    stages share the cores, several 1-thread replicas keep every core busy where one
    multi-thread replica stalls at OpenMP barriers whenever a co-tenant takes a core.
    """
    import copy

    config = copy.deepcopy(template)
    apps = config["applications"]
    if len(apps) != 1:
        raise ValueError("the template must hold exactly one application")
    args = apps[0]["args"]
    recs = args["recognizers"]
    index = next((i for i, r in enumerate(recs) if r["name"] == recognizer["name"]), None)
    if index is None:
        if not replace_first:
            raise ValueError(f"no recognizer {recognizer['name']!r} in the template")
        first = recs[0]
        new = {**recognizer, "aliases": first.get("aliases", [])}
        new["deployment"] = copy.deepcopy(first.get("deployment", {}))
        recs[0] = new
        index = 0
        args.setdefault("ingress", {})["default_model"] = recognizer["name"]
    rec = recs[index]
    rec["batch"] = {**rec.get("batch", {}), **batch}
    deployment = rec.setdefault("deployment", {})
    items = int(batch["max_batch_items"])
    # One batch running, the next one filling behind it (AppConfig requires >= items).
    deployment["max_ongoing_requests"] = max(
        int(deployment.get("max_ongoing_requests") or 0), 2 * items
    )
    if cpu_threads:
        rec["cpu_threads"] = cpu_threads
        actor = deployment.setdefault("ray_actor_options", {})
        env = actor.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env["OMP_NUM_THREADS"] = str(cpu_threads)
    if replicas > 1:
        deployment["num_replicas"] = replicas
        if cpus:
            others = sum(
                float((d or {}).get("ray_actor_options", {}).get("num_cpus", 1.0))
                for d in (args.get("vad_deployment"), args.get("ingress", {}).get("deployment"))
            )
            share = max(0.1, (cpus - others) / replicas)
            deployment.setdefault("ray_actor_options", {})["num_cpus"] = round(share - 0.005, 2)
    return config


def header(lines: Sequence[str]) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def capacities(
    axis: str,
    values: Sequence[float],
    *,
    item_cap: int,
    dynamic_s: float,
) -> list[tuple[int, float, float]]:
    """(max_batch_items, max_forward_audio_s, max_batch_audio_s) of each sweep point.

    ``items`` axis: N items, a forward budget of N full 30 s segments. ``seconds`` axis: a
    forward budget of S padded seconds under a fixed item cap. The dynamic batch capacity is
    ``dynamic_s`` (at least the forward budget) on both.
    """
    out = []
    for value in sorted(values):
        if axis == "items":
            items, forward_s = int(value), float(value) * WINDOW_S
        else:
            items, forward_s = int(item_cap), float(value)
        out.append((items, forward_s, max(forward_s, float(dynamic_s))))
    return out


def sweep_table(points: Sequence[SweepPoint], chosen: SweepPoint, limit: float) -> list[str]:
    out = [
        f"{'items':>6} {'fwd s':>6} {'dyn s':>6} {'RTFx':>7} {'peak GiB':>9} {'passes':>7} "
        f"{'pad.eff':>8}",
    ]
    for p in points:
        head = f"{p.max_batch_items:>6} {p.max_forward_audio_s:>6.0f} {p.max_batch_audio_s:>6.0f}"
        if not p.ok:
            out.append(f"{head}  FAILED  {p.error}")
            continue
        mark = "  <- chosen" if p == chosen else ""
        over = "  (over memory limit)" if p.peak_memory_bytes > limit else ""
        out.append(
            f"{head} {p.throughput_rtfx:>7.2f} {p.peak_memory_bytes / 2**30:>9.2f} "
            f"{p.forward_passes:>7} {p.padding_efficiency:>8.2f}{mark}{over}"
        )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default="whisper-tiny.en",
        help="paraformer-large, paraformer-tiny, sensevoice-small, sensevoice-tiny (random "
        "weights) or whisper-tiny.en",
    )
    p.add_argument("--model-path", default=None, help="model folder (default: by name)")
    p.add_argument(
        "--config-model-ref",
        default=None,
        help="model reference written into the config (default: the name under the "
        "models dir when it resolves there, else the folder)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", default=None, help="default: fp32/int8 on CPU, fp16 on CUDA")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="CPU: recognizer replicas to write (each with --threads threads, num_cpus "
        "splitting what ingress and VAD leave); e.g. --threads 1 --replicas 2 on 2 cores",
    )
    p.add_argument(
        "--axis",
        choices=("items", "seconds"),
        default=None,
        help="what to sweep: the item cap (default for Whisper, which pads every item to "
        "30 s) or the forward budget in padded seconds (default for FunASR)",
    )
    p.add_argument(
        "--values",
        default=None,
        help="comma-separated sweep values (default: items CPU 1..16, CUDA 8..256; "
        "seconds CPU 15..240, CUDA 60..1920)",
    )
    p.add_argument(
        "--item-cap", type=int, default=None, help="items axis off: the fixed max_batch_items"
    )
    p.add_argument(
        "--dynamic-s",
        type=float,
        default=None,
        help="dynamic batch capacity max_batch_audio_s (default CPU 480, CUDA 960)",
    )
    p.add_argument(
        "--mode",
        choices=("serve", "offline"),
        default="serve",
        help="serve: dynamic batches in arrival order, as Serve forms them under load "
        "(default); offline: the whole workload sorted at once (Ray Data, the floor)",
    )
    p.add_argument(
        "--workload-s",
        type=float,
        default=None,
        help="seconds of speech per point (default: two of the largest dynamic batches, "
        "at least 180)",
    )
    p.add_argument(
        "--merge-gap-ms",
        type=int,
        default=None,
        help="vad.merge_gap_ms to tune with and write (default: the template's). The "
        "recognizer's pack_segments_s (Whisper: 30 s windows) is applied after it, as in "
        "the service",
    )
    p.add_argument("--corpus-minutes", type=float, default=30.0)
    p.add_argument("--corpus-dir", type=Path, default=Path("/tmp/asr-bench-corpus"))
    p.add_argument(
        "--memory-headroom",
        type=float,
        default=0.2,
        help="fraction of the memory kept free (default 0.2)",
    )
    p.add_argument("--memory-limit-gib", type=float, default=None)
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="knee: smallest capacity within this fraction of the best throughput",
    )
    p.add_argument(
        "--probe-worst-case",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the largest forward each point allows (default: on for CUDA)",
    )
    p.add_argument("--template", default=None, help="Serve config to copy (default by device)")
    p.add_argument(
        "--out", type=Path, default=None, help="default: ray_configs/tuned_<device>_<model>.yaml"
    )
    p.add_argument("--dry-run", action="store_true", help="print the config, write nothing")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    import yaml

    from serve_app.config import RecognizerSettings, VadSettings, load_app_config
    from serve_app.core.types import SegmentJob
    from serve_app.recognizers.factory import build_backend
    from serve_app.tools import corpus as bench_corpus
    from serve_app.tools.models import default_precision, models_dir, resolve_model

    overrides = {args.model: args.model_path} if args.model_path else {}
    model = resolve_model(args.model, overrides)
    axis = args.axis or ("items" if model.is_whisper else "seconds")
    values = (
        [float(x) for x in args.values.split(",")]
        if args.values
        else list(DEFAULT_SWEEP[(args.device, axis)])
    )
    dynamic_s = args.dynamic_s or DEFAULT_DYNAMIC_S[args.device]
    item_cap = args.item_cap or DEFAULT_ITEM_CAP[args.device]
    points_to_run = capacities(axis, values, item_cap=item_cap, dynamic_s=dynamic_s)
    probe_worst = (
        args.probe_worst_case if args.probe_worst_case is not None else (args.device == "cuda")
    )

    torch.set_num_threads(args.threads)
    corpus = bench_corpus.build_corpus(args.corpus_minutes, root=args.corpus_dir)
    template_path = REPO / (args.template or DEFAULT_TEMPLATES[args.device])
    template = yaml.safe_load(template_path.read_text())
    vad_section = dict(template["applications"][0]["args"].get("vad", {}))
    merge_gap_ms = args.merge_gap_ms
    if merge_gap_ms is not None:
        vad_section["merge_gap_ms"] = merge_gap_ms
    vad = VadSettings.model_validate(vad_section)
    precision = default_precision(model, args.device, args.precision)
    rec_dict: dict[str, Any] = {
        "name": model.name,
        "backend": model.backend,
        "model": model.path,
        "device": args.device,
        "precision": precision,
    }
    if model.language:
        rec_dict["language"] = model.language
    if args.device == "cpu":
        rec_dict["cpu_threads"] = args.threads
    settings = RecognizerSettings.model_validate(rec_dict)
    with contextlib.redirect_stdout(sys.stderr):
        spans = bench_corpus.vad_spans(
            corpus, vad_settings_json=vad.model_dump_json(), models_dir=models_dir()
        )
    spans = bench_corpus.pack_spans(spans, settings.segment_pack_s, corpus)
    segments = [s for _, s in bench_corpus.load_segments(corpus, spans)]
    largest_dynamic_s = max(c[2] for c in points_to_run)
    workload_s = args.workload_s or max(180.0, 2 * largest_dynamic_s)
    work = workload(segments, workload_s)
    speech_s = sum(len(s) for s in work) / 16000

    print(
        f"{model.name} ({model.backend}, {precision}, {args.device}, {args.threads} threads); "
        f"{args.mode} mode, sweeping {axis}; workload {len(work)} segments, {speech_s:.0f} s "
        f"of speech from {corpus.directory}",
        flush=True,
    )
    with contextlib.redirect_stdout(sys.stderr):
        backend = build_backend(settings, models_dir())
        torch.set_num_threads(args.threads)
        backend.warmup()  # type: ignore[attr-defined]
    jobs = [SegmentJob(audio=s) for s in work]
    longest = max(segments, key=len)
    limit = memory_limit_bytes(args.device, args.memory_headroom, args.memory_limit_gib)
    print(f"memory limit {limit / 2**30:.2f} GiB (headroom {args.memory_headroom:.0%})")
    load_at_start = os.getloadavg()[0]

    points: list[SweepPoint] = []
    for items, forward_s, batch_s in points_to_run:
        probe = None
        if probe_worst:
            # The heaviest forward the budget allows: as many full-length segments as fit.
            count = items if model.is_whisper else max(1, min(items, int(forward_s // WINDOW_S)))
            probe = [SegmentJob(audio=longest) for _ in range(count)]
        point = measure(
            backend,
            jobs,
            items=items,
            budget_s=forward_s,
            dynamic_s=batch_s,
            device=args.device,
            backend_kind=model.backend,
            probe=probe,
            mode=args.mode,
        )
        points.append(point)
        head = f"  items {items:>4}  forward {forward_s:>6.0f} s  dynamic {batch_s:>6.0f} s"
        if point.ok:
            print(
                f"{head}  RTFx {point.throughput_rtfx:7.2f}  peak "
                f"{point.peak_memory_bytes / 2**30:6.2f} GiB  passes {point.forward_passes}  "
                f"padding eff. {point.padding_efficiency:.2f}",
                flush=True,
            )
        else:
            print(f"{head}  FAILED: {point.error}", flush=True)
        if not point.ok or point.peak_memory_bytes > limit:
            break  # larger batches only need more memory
    chosen = pick_knee(points, memory_limit_bytes=limit, tolerance=args.tolerance)
    batch = {
        "max_batch_audio_s": float(chosen.max_batch_audio_s),
        "max_batch_items": int(chosen.max_batch_items),
        "max_forward_audio_s": float(chosen.max_forward_audio_s),
    }
    table = sweep_table(points, chosen, limit)
    print("\n".join(table))

    ref = args.config_model_ref
    if ref is None:
        root = models_dir().resolve()
        path = Path(model.path).resolve()
        ref = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    config_rec = {**rec_dict, "model": ref}
    config = tuned_config(
        template,
        recognizer=config_rec,
        batch=batch,
        replace_first=True,
        cpu_threads=args.threads if args.device == "cpu" else None,
        replicas=args.replicas if args.device == "cpu" else 1,
        cpus=float(os.cpu_count() or 1),
    )
    if merge_gap_ms is not None:
        config["applications"][0]["args"].setdefault("vad", {})["merge_gap_ms"] = merge_gap_ms
    info = machine()
    lines = [
        f"Tuned by serve_app.tools.tune_batch on {time.strftime('%Y-%m-%d')}: {model.name} "
        f"({model.backend}, {precision}) on {args.device}",
        f"hardware: {info.get('cuda') or info['cpu']}, {info['cores']} cores, "
        f"{info.get('memory_gib', '?')} GiB RAM; {args.threads} model threads; "
        f"load average at start {load_at_start:.2f}",
        f"workload: {len(work)} items (VAD segments after the recognizer's packing, "
        f"pack_segments_s {settings.segment_pack_s:g}), {speech_s:.0f} s of audio "
        f"(corpus {corpus.directory.name}; vad.merge_gap_ms {vad.merge_gap_ms})",
        f"sweep: {axis} axis, {args.mode} mode; knee = smallest capacity within "
        f"{args.tolerance:.0%} of the best RTFx under {limit / 2**30:.1f} GiB",
        "",
        *table,
        "",
        "command: python -m serve_app.tools.tune_batch " + " ".join(argv or sys.argv[1:]),
        f"template: {template_path.relative_to(REPO)} (recognizer batch section replaced)",
    ]
    if model.name.startswith("paraformer"):
        lines.append(
            "model: RANDOM-WEIGHT Paraformer (python -m serve_app.tools.random_models --out "
            "<models_dir>/random): the real architecture and cost, gibberish text"
        )
    text = header(lines) + yaml.safe_dump(config, sort_keys=False, width=100)
    if args.dry_run:
        print(text)
        return 0
    out = args.out or REPO / f"ray_configs/tuned_{args.device}_{model.name}.yaml"
    out.write_text(text)
    load_app_config(out)  # what serve run / build_app validate
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(text))
    print(
        f"wrote {out} (max_batch_items {batch['max_batch_items']}, max_forward_audio_s "
        f"{batch['max_forward_audio_s']:g}, max_batch_audio_s {batch['max_batch_audio_s']:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
