"""``python -m scripts.bench``: flags, every model x row (each in a child process running
:func:`run_worker`), the report."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.common.service import REPO
from serve_app.tools import corpus as bench_corpus
from serve_app.tools.models import ModelSpec, models_dir, resolve_model

from . import __doc__ as PACKAGE_DOC
from . import library, services
from .harness import FUNASR_ONNX, ROWS, set_threads, split_row
from .orchestrate import RowResult, run_row
from .report import ratios, render, write_report
from .settings import (
    _source_recognizer,
    batch_settings,
    config_source,
    job_config,
    job_env,
    serve_app_config,
)

ROW_RUNNERS = {
    "1": lambda spec: library.run(spec, batched=False),
    "2": lambda spec: library.run(spec, batched=True),
    "3": services.funasr_server_row,
    "4": services.serve_row,
    "5": services.ray_data_row,
    "6": library.floor_row,
    "7": lambda spec: library.funasr_onnx_row(spec, batched=False),
    "8": lambda spec: library.funasr_onnx_row(spec, batched=True),
}


def run_worker(spec_path: Path) -> int:
    """The child process of one row: read its spec, time the row, write its figures."""
    spec = json.loads(spec_path.read_text())
    set_threads(spec["threads"])
    out = ROW_RUNNERS[split_row(spec["row"])[0]](spec)
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


def onnx_base(model: ModelSpec, row: str, opts: dict, base: dict) -> dict:
    """An ONNX row's spec (``6q``...): the same settings with ``runtime: onnx`` at the
    suffix's precision in every config the row reads."""
    precision = split_row(row)[1]
    if precision is None or model.is_whisper:
        return base
    onnx = {**opts, "runtime": "onnx", "precision": precision}
    serve, job = serve_app_config(model, onnx), job_config(model, onnx)
    job["vad"] = dict(serve["vad"])
    return {
        **base,
        "runtime": "onnx",
        "precision": precision,
        "serve_config": serve,
        "job_config": job,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=PACKAGE_DOC.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpus-minutes", type=float, default=30.0)
    p.add_argument("--corpus-dir", type=Path, default=bench_corpus.DEFAULT_ROOT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="paraformer-large,whisper-tiny.en")
    p.add_argument(
        "--model-path",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="model folder for NAME (default: random FunASR models in /tmp/rm or "
        "generated; Whisper from the models dir)",
    )
    p.add_argument(
        "--rows",
        default=",".join(ROWS),
        help="1-6, and on ONNX Runtime (suffix o = fp32, q = int8) 4, 5, 6 and the "
        f"funasr-onnx package's 7, 8 (pip install {FUNASR_ONNX} --no-deps); run 6q first "
        "(it exports the graphs once, cached)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="HTTP clients in rows 3 and 4")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8"),
        default=None,
        help="default: fp32 (FunASR) / int8 (Whisper) on CPU, fp16 on CUDA",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for the model in every row (default: all cores)",
    )
    p.add_argument(
        "--batch-config",
        default=None,
        help="Serve config that rows 2, 4, 5, 6 take their batch settings (and row 4 its "
        "deployments) from (default: ray_configs/tuned_<device>_<model>.yaml if present, "
        "else ray_configs/serve.yaml with built-in batch settings)",
    )
    p.add_argument(
        "--job-config",
        default=None,
        help="job config whose actor pools, files per recognizer call and recognizer "
        "cpu_threads row 5 runs (default: ray_configs/batch_cpu.yaml)",
    )
    p.add_argument(
        "--layout",
        choices=("config", "shipped"),
        default="config",
        help="config: that config's deployments, the model's replica/actor using all cores "
        "(OMP_NUM_THREADS); shipped: the resources of ray_configs/serve.yaml and "
        "batch_cpu.yaml untouched (the model gets 1 thread)",
    )
    p.add_argument(
        "--max-load",
        type=float,
        default=1.5,
        help="wait for the 1-min load average to drop below this before a row",
    )
    p.add_argument("--load-wait-s", type=float, default=900.0)
    p.add_argument(
        "--max-foreign-cores",
        type=float,
        default=0.3,
        help="run a row again when other processes used more CPU cores than this meanwhile",
    )
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--row-timeout-s", type=float, default=3600.0)
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--_worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._worker is not None:
        return run_worker(args._worker)
    import signal

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; choose from {ROWS}")
    overrides = dict(item.split("=", 1) for item in args.model_path)
    models = [
        resolve_model(name.strip(), overrides) for name in args.models.split(",") if name.strip()
    ]
    corpus = bench_corpus.build_corpus(args.corpus_minutes, root=args.corpus_dir, seed=args.seed)
    print(f"corpus: {corpus.describe()}", flush=True)

    vad_model = "fsmn-vad"
    vad_path = str(models_dir() / vad_model)
    results: list[RowResult] = []
    configs: dict[str, dict] = {}
    started = time.time()
    for model in models:
        source = config_source(model, args.device, args.batch_config)
        batch = batch_settings(model, source)
        batch_source = str(source.relative_to(REPO) if source.is_relative_to(REPO) else source)
        if _source_recognizer(model, source)["name"] != model.name:
            batch_source = "built-in defaults (no tuned config for this model)"
        opts = {
            "device": args.device,
            "precision": args.precision,
            "threads": args.threads,
            "layout": args.layout,
            "batch": batch,
            "vad_model": vad_model,
            "config_path": str(source),
            "job_config_path": args.job_config,
        }
        serve_config = serve_app_config(model, opts)
        job = job_config(model, opts)
        job["vad"] = dict(serve_config["vad"])  # one VAD setting for rows 4, 5 and 6
        configs[model.name] = {"batch": batch, "batch_source": batch_source}
        configs[model.name].update(serve_config=serve_config, job_config=job)
        configs[model.name]["job_env"] = job_env(opts, job)
        corpus_spec = {"minutes": args.corpus_minutes, "root": str(args.corpus_dir)}
        base = {**opts, **configs[model.name], "corpus": {**corpus_spec, "seed": args.seed}}
        base.update(concurrency=args.concurrency, vad_path=vad_path, vad=serve_config["vad"])
        base.update(request_timeout_s=3600.0, startup_timeout_s=600.0)
        print(
            f"== {model.name} ({model.backend}, {model.path}); batch {batch} from {batch_source}",
            flush=True,
        )
        for row in rows:
            results.append(run_row(model, row, args, onnx_base(model, row, opts, base)))
    ratio_rows = ratios(results)
    table = render(results, ratio_rows)
    print()
    print(table)
    steady = [r for r in results if r.steady_rtfx]
    for r in steady:
        print(
            f"  {r.model} row {r.row}: steady-state RTFx {r.steady_rtfx} (first recognizer "
            "call -> end; the row's RTFx includes actor start and model load)"
        )
    write_report(args, started, corpus, configs, results, ratio_rows)
    return 0 if all(r.status != "failed" for r in results) else 1
