"""The rows of the GPU check: each one run within the time budget and recorded as it ends
(ok, skipped or error, never raised), per model and precision on one loaded backend."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from scripts.gpu_check.features import (
    TorchFbank,
    fbank_lengths,
    frontend_features,
    oom_split,
    same_text,
    texts_of_raw,
    torch_inference,
)
from scripts.gpu_check.prepare import (
    MAX_SEGMENT_S,
    SAMPLE_RATE_HZ,
    Context,
    ModelChoice,
    add_row,
    peak_mib,
    quiet,
    release,
    reset_peak,
    rtfx,
    sync,
    tuned_batch,
)

KNEE_TOLERANCE = 0.05
logger = logging.getLogger("gpu_check")


def run_row(
    ctx: Context, row_id: str, model: str, precision: str, min_left_s: float, fn: Callable[[], dict]
) -> dict:
    """Run one row if the budget allows; record ok / skipped / error, never raise."""
    base = {"id": row_id, "model": model, "precision": precision}
    if ctx.budget.left() < min_left_s:
        return add_row(
            ctx,
            {
                **base,
                "status": "skipped",
                "reason": f"time budget: {ctx.budget.left():.0f} s left, "
                f"the row needs ~{min_left_s:.0f} s",
            },
        )
    if ctx.args is not None:
        # FunASR's loaders call torch.set_num_threads(ncpu) (the VAD's 1, AutoModel's own
        # default): every row starts from the same CPU thread count.
        import torch

        torch.set_num_threads(ctx.args.cpu_threads)
    started = time.perf_counter()
    try:
        with quiet():
            out = fn()
    except Exception as exc:  # a row's failure is a result, not the end of the check
        logger.exception("row %s failed", row_id)
        return add_row(
            ctx,
            {**base, "status": "error", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"},
        )
    if out.get("status") in ("skipped", "error"):  # a row's own verdict, with its figures
        return add_row(ctx, {**base, **out})
    return add_row(
        ctx, {**base, "status": "ok", **out, "row_s": round(time.perf_counter() - started, 2)}
    )


def build_auto_model(model_dir: Path, ctx: Context, precision: str, vad: bool) -> Any:
    from funasr import AutoModel

    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "disable_update": True,
        "disable_pbar": True,
        "disable_log": True,
        "ncpu": ctx.args.cpu_threads,
    }
    if precision in ("fp16", "bf16"):
        kwargs[precision] = True  # FunASR's own flags: the model is converted to that dtype
    if ctx.device.startswith("cuda"):
        kwargs["device"] = ctx.device
    else:
        # AutoModel turns batch_size_s off when its device string is exactly "cpu";
        # "cpu:0" is the same device and keeps FunASR's own batching on.
        kwargs["device"] = "cpu:0" if vad else "cpu"
    if vad:
        kwargs["vad_model"] = str(ctx.vad_dir)
        kwargs["vad_kwargs"] = {"max_single_segment_time": int(MAX_SEGMENT_S * 1000)}
    return AutoModel(**kwargs)


def row_generate(ctx: Context, auto: Any, *, vad: bool, budget_s: float, cap_s: float) -> dict:
    """Rows a and b: AutoModel.generate(file) over the corpus, one file per call.

    One AutoModel (built with the VAD where there is one) serves both rows: for row a its
    ``vad_model`` is set aside, and ``generate`` then runs the model alone (batch_size 1).
    """
    if vad and getattr(auto, "vad_model", None) is None:
        return {"status": "skipped", "reason": "no fsmn-vad folder found (--vad-dir)"}
    vad_model = auto.vad_model
    if not vad:
        auto.vad_model = None
    try:
        kwargs = {"batch_size_s": int(budget_s)} if vad else {}
        auto.generate(input=ctx.audio[0][: 2 * SAMPLE_RATE_HZ], **kwargs)  # warm-up
        sync(ctx.device)
        reset_peak(ctx.device)
        done_s, wall_s, files = 0.0, 0.0, 0
        deadline = time.perf_counter() + cap_s
        for samples in ctx.audio:
            t0 = time.perf_counter()
            auto.generate(input=samples, **kwargs)
            sync(ctx.device)
            wall_s += time.perf_counter() - t0
            done_s += len(samples) / SAMPLE_RATE_HZ
            files += 1
            if time.perf_counter() > deadline:
                break
    finally:
        auto.vad_model = vad_model
    out = {
        "audio_s": round(done_s, 2),
        "wall_s": round(wall_s, 3),
        "rtfx": rtfx(done_s, wall_s),
        "files": files,
        "partial": files < len(ctx.audio),
        "gpu_peak_mib": peak_mib(ctx.device),
        "scope": "sum over files of AutoModel.generate(pre-decoded samples)",
    }
    if vad:
        out["batch_size_s"] = int(budget_s)
    return out


def timed_batched(
    recognizer: Any, jobs: Sequence[Any], device: str
) -> tuple[float, list[Any], Any]:
    sync(device)
    started = time.perf_counter()
    results = recognizer.transcribe_batch(jobs)
    sync(device)
    return time.perf_counter() - started, results, recognizer.last_stats


def failures(results: Sequence[Any]) -> list[Any]:
    return [r for r in results if isinstance(r, Exception)]


@contextlib.contextmanager
def fbank_timer() -> Iterator[list[float]]:
    """Time FunASR's extract_fbank inside the model modules (the CPU feature step)."""
    import importlib

    spent = [0.0]
    patched = []
    for name in ("funasr.models.paraformer.model", "funasr.models.sense_voice.model"):
        module = importlib.import_module(name)
        original = module.extract_fbank

        def timed(*a: Any, _orig: Any = original, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t0

        setattr(module, "extract_fbank", timed)  # noqa: B010  (a module global, for mypy)
        patched.append((module, original))
    try:
        yield spent
    finally:
        for module, original in patched:
            setattr(module, "extract_fbank", original)  # noqa: B010


def check_model(ctx: Context, choice: ModelChoice, model_dir: Path, precisions: list[str]) -> None:
    """Every row of one model, for each precision, on one loaded backend."""
    from serve_app.recognizers.funasr_backend import FunAsrBackend

    try:
        with quiet():
            # One load for every precision: fp16/bf16 are autocast around the same weights.
            backend = FunAsrBackend(
                str(model_dir),
                device=ctx.device,
                precision=precisions[0],
                num_threads=ctx.args.cpu_threads,
            )
    except Exception as exc:  # the next model may still load: record it, do not stop
        logger.exception("loading %s failed", model_dir)
        reason = f"FunAsrBackend load failed: {type(exc).__name__}: {str(exc)[:300]}"
        add_row(ctx, {"id": "load", "model": choice.random_name, "precision": "-",
                      "status": "error", "reason": reason})  # fmt: skip
        return
    for precision in precisions:
        set_precision(ctx, backend, precision)
        ModelRows(ctx, choice, model_dir, backend, precision).run()
        release(ctx.device)
    # A row that failed at every requested precision (FunASR's own fp16/bf16 flags, say)
    # runs once more in fp32, so one GPU run always brings back a figure per row.
    rows = [r for r in ctx.rows if r["model"] == choice.random_name]
    never_ok = {r["id"] for r in rows} - {r["id"] for r in rows if r["status"] == "ok"}
    if never_ok and "fp32" not in precisions:
        set_precision(ctx, backend, "fp32")
        ModelRows(ctx, choice, model_dir, backend, "fp32", only=never_ok, fallback=True).run()
    del backend
    release(ctx.device)


def set_precision(ctx: Context, backend: Any, precision: str) -> None:
    """Switch the loaded backend's autocast precision (the weights stay fp32)."""
    backend.precision = precision
    if ctx.device == "cpu" and ctx.args.cpu_autocast:
        import torch

        dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}

        @contextlib.contextmanager
        def cpu_autocast() -> Iterator[None]:
            if precision not in dtypes:
                yield
                return
            with torch.autocast(device_type="cpu", dtype=dtypes[precision]):
                yield

        backend._precision = cpu_autocast


class ModelRows:
    """The rows of one model at one precision; rows d, e, g compare with row c's run."""

    def __init__(
        self,
        ctx: Context,
        choice: ModelChoice,
        model_dir: Path,
        backend: Any,
        precision: str,
        *,
        only: set[str] | None = None,
        fallback: bool = False,
    ) -> None:
        self.only, self.fallback = only, fallback
        from serve_app.core.types import SegmentJob
        from serve_app.recognizers.base import BatchedRecognizer

        self.ctx, self.choice, self.model_dir = ctx, choice, model_dir
        self.backend, self.precision = backend, precision
        self.device = ctx.device
        self.name = choice.random_name
        self.is_paraformer = choice.key == "paraformer"
        budget_s, max_items, self.budget_source = tuned_batch(choice.config)
        if ctx.args.tiny:
            budget_s, max_items = min(budget_s, 40.0), min(max_items, 8)
        self.budget_s, self.max_items = budget_s, max_items
        self.jobs = [SegmentJob(audio=s) for s in ctx.segments]
        self.speech_s = ctx.speech_s
        self.recognizer = BatchedRecognizer(
            backend, max_forward_audio_s=budget_s, max_batch_items=max_items
        )
        self.share = ctx.args.time_budget_s / 100.0  # 1 % of the budget: the row caps' unit
        self.c: dict[str, Any] = {}  # what row c (and d) measured
        self._auto: Any = None

    def run(self) -> None:
        rows: list[tuple[str, float, Callable[[], dict]]] = [
            ("a_generate_per_file", 5, lambda: self.generate(vad=False)),
        ]
        if self.is_paraformer:
            rows.append(("b_generate_vad_batch_size_s", 5, lambda: self.generate(vad=True)))
        rows.append(("c_batched_recognizer", 3, self.batched))
        if self.is_paraformer:
            rows.append(("c_budget_sweep", 8, self.sweep))
        rows.append(("d_forward_floor", 3, self.floor))
        if self.is_paraformer:
            rows += [
                ("e_time_split", 1, self.split),
                ("f_oom_split", 4, lambda: oom_split(self.ctx, self.backend, self.max_items)),
                ("g_gpu_fbank", 3, self.gpu_fbank),
                ("g_overlap_prep", 3, self.overlap),
            ]
        rows = [row for row in rows if self.only is None or row[0] in self.only]
        if not self.fallback:
            rows.insert(0, ("precision_probe", 1, self.probe))
        for row_id, min_share, fn in rows:
            row = run_row(self.ctx, row_id, self.name, self.precision, min_share * self.share, fn)
            if self.fallback:
                row["fallback"] = "failed at every requested precision: rerun in fp32"
            if row_id.startswith("b_") or (row_id.startswith("a_") and not self.is_paraformer):
                self._auto = None  # rows a and b done: free FunASR's own model copy
                release(self.device)

    def probe(self) -> dict:
        """The backend's warm-up at this precision: two 1 s items through forward."""
        started = time.perf_counter()
        self.backend.warmup()
        sync(self.device)
        return {"wall_s": round(time.perf_counter() - started, 3)}

    # -- rows a, b

    def auto_model(self) -> Any:
        """One AutoModel (with the VAD where there is one) for rows a and b."""
        if self._auto is None:
            use_vad = self.is_paraformer and self.ctx.vad_dir is not None
            self._auto = build_auto_model(self.model_dir, self.ctx, self.precision, use_vad)
        return self._auto

    def generate(self, *, vad: bool) -> dict:
        return row_generate(
            self.ctx, self.auto_model(), vad=vad, budget_s=self.budget_s, cap_s=6 * self.share
        )

    # -- row c

    def batched(self) -> dict:
        reset_peak(self.device)
        with fbank_timer() as fbank_s:
            wall_s, results, stats = timed_batched(self.recognizer, self.jobs, self.device)
        bad = failures(results)
        if bad:
            raise RuntimeError(f"{len(bad)} of {len(self.jobs)} segments failed: {bad[0]}")
        self.c.update(wall_s=wall_s, fbank_s=fbank_s[0], texts=[r.text for r in results])
        return {
            "audio_s": round(self.speech_s, 2),
            "wall_s": round(wall_s, 3),
            "rtfx": rtfx(self.speech_s, wall_s),
            "rtfx_of_corpus": rtfx(self.ctx.audio_s, wall_s),
            "segments": len(self.jobs),
            "forward_passes": stats.num_forward_passes,
            "padding_efficiency": round(stats.padding_efficiency, 3),
            "max_batch_audio_s": self.budget_s,
            "max_batch_items": self.max_items,
            "budget_source": self.budget_source,
            "cpu_fbank_s": round(fbank_s[0], 3),
            "gpu_peak_mib": peak_mib(self.device),
            "scope": "BatchedRecognizer.transcribe_batch(all segments): fbank + forward",
        }

    def sweep(self) -> dict:
        """The forward budget swept as the batch tuner sweeps it (one ``transcribe_batch``
        of every segment per point); stops at the first point that runs out of memory."""
        from serve_app.tools.tune_sweep import measure, pick_knee

        args = self.ctx.args
        budgets = [b for b in args.sweep_s if b > 0]
        points = []
        deadline = time.perf_counter() + 10 * self.share
        for budget_s in budgets:
            if time.perf_counter() > deadline:
                break
            release(self.device)
            point = measure(
                self.backend, self.jobs, items=args.sweep_items, budget_s=budget_s,
                dynamic_s=budget_s, device=self.device, backend_kind="funasr", probe=None,
                mode="offline",
            )  # fmt: skip
            points.append(point)
            if not point.ok:
                break  # past the memory the device has
        cuda = self.device.startswith("cuda")

        def shown(p: Any) -> dict:
            return {
                "max_batch_audio_s": p.max_forward_audio_s,
                "ok": p.ok,
                "rtfx": round(p.throughput_rtfx, 2),
                "gpu_peak_mib": round(p.peak_memory_bytes / 2**20, 1) if cuda else None,
                "forward_passes": p.forward_passes,
                "padding_efficiency": round(p.padding_efficiency, 3),
                **({"error": p.error} if p.error else {}),
            }

        try:
            knee = pick_knee(points, memory_limit_bytes=float("inf"), tolerance=KNEE_TOLERANCE)
        except ValueError:
            raise RuntimeError(f"no sweep point succeeded: {[shown(p) for p in points]}") from None
        return {
            "points": [shown(p) for p in points],
            "knee_max_batch_audio_s": knee.max_forward_audio_s,
            "knee_rtfx": shown(knee)["rtfx"],
            "knee_gpu_peak_mib": shown(knee)["gpu_peak_mib"],
            "best_rtfx": round(max(p.throughput_rtfx for p in points if p.ok), 2),
            "max_batch_items": args.sweep_items,
            "partial": len(points) < len(budgets),
        }

    # -- rows d, e, g: row c's batches through the model's inference on features

    def batch_indices(self) -> list[list[int]]:
        """Row c's forward passes, as job indices."""
        return [
            [group[i] for i in batch]
            for group, batch_plan in self.recognizer.plan(self.jobs)
            for batch in batch_plan.batches
        ]

    @property
    def frontend(self) -> Any:
        return self.backend._loaded.kwargs["frontend"]

    def cpu_features(self, idx: list[int]) -> tuple[Any, Any]:
        return frontend_features(self.frontend, [self.jobs[i].audio for i in idx])

    def forward_batches(
        self, features: Callable[[list[int]], tuple[Any, Any]], threads: int = 0, **out: Any
    ) -> dict:
        """Row c's batches through ``module.inference`` on ``features(batch)``, made inline
        or (``threads``) in a pool ahead of the forwards; timed, texts compared with c's."""
        batches = self.batch_indices()
        kwargs = dict(self.backend._call_kwargs(self.jobs[0].options), data_type="fbank")
        raws = []
        sync(self.device)
        reset_peak(self.device)
        started = time.perf_counter()
        with ThreadPoolExecutor(max(1, threads)) as pool:
            ahead = [pool.submit(features, idx) for idx in batches] if threads else []
            with torch_inference(), self.backend._precision():
                for n, idx in enumerate(batches):
                    feats, lengths = ahead[n].result() if threads else features(idx)
                    raw = self.backend.module.inference(
                        data_in=feats.to(self.device, non_blocking=True),
                        data_lengths=fbank_lengths(self.backend, lengths.to(self.device)),
                        key=[f"i{i}" for i in idx],
                        **kwargs,
                    )
                    raws.append((raw, idx))
        sync(self.device)
        wall_s = time.perf_counter() - started
        texts = texts_of_raw(self.backend, raws, len(self.jobs))
        return {
            "audio_s": round(self.speech_s, 2),
            "wall_s": round(wall_s, 3),
            "rtfx": rtfx(self.speech_s, wall_s),
            "speedup_vs_c": round(self.c.get("wall_s", float("nan")) / wall_s, 2),
            "forward_passes": len(batches),
            "gpu_peak_mib": peak_mib(self.device),
            "same_text_as_c": same_text(self.c, texts),
            **out,
        }

    def floor(self) -> dict:
        # Features computed beforehand, already on the device: no decode, no fbank.
        ready = {}
        for idx in self.batch_indices():
            feats, lengths = self.cpu_features(idx)
            ready[tuple(idx)] = (feats.to(self.device), lengths.to(self.device))
        out = self.forward_batches(
            lambda idx: ready[tuple(idx)],
            scope="model.inference on features already on the device (row c's batches): "
            "encoder, predictor, decoder, argmax and detokenize; no decode, no fbank",
        )
        self.c["floor_s"] = out["wall_s"]
        del out["speedup_vs_c"]
        return out

    def split(self) -> dict:
        if "wall_s" not in self.c or "floor_s" not in self.c:
            return {"status": "skipped", "reason": "needs rows c and d"}
        ctx = self.ctx
        wall_c, floor_s, fbank_c = self.c["wall_s"], self.c["floor_s"], self.c["fbank_s"]
        fbank_rtfx, floor_rtfx = rtfx(self.speech_s, fbank_c), rtfx(self.speech_s, floor_s)
        return {
            "decode_s": round(ctx.decode_s, 3),
            "decode_rtfx": rtfx(ctx.audio_s, ctx.decode_s),
            "vad_s": None if ctx.vad_s is None else round(ctx.vad_s, 3),
            "vad_rtfx": None if not ctx.vad_s else rtfx(ctx.audio_s, ctx.vad_s),
            "cpu_fbank_s_in_c": round(fbank_c, 3),
            "cpu_fbank_share_of_c": round(fbank_c / wall_c, 3),
            "cpu_fbank_rtfx": fbank_rtfx,
            "forward_s_floor": round(floor_s, 3),
            "other_s_in_c": round(max(0.0, wall_c - fbank_c - floor_s), 3),
            "gpu_idle_fraction_c": round(max(0.0, 1.0 - floor_s / wall_c), 3),
            "fbank_caps_gpu": fbank_rtfx < floor_rtfx,
            "fbank_cap_factor": round(floor_rtfx / fbank_rtfx, 2),
            "cpu_threads": ctx.args.cpu_threads,
            "notes": "idle fraction = 1 - forward floor / row c wall (same batches); "
            "fbank_cap_factor = floor rtfx / CPU-fbank rtfx (> 1: fbank caps the GPU); "
            "decode and VAD run once, before the rows (CPU, vad_rtfx with the VAD's threads)",
        }

    def gpu_fbank(self) -> dict:
        fbank = TorchFbank(self.frontend, self.device)
        probe = self.ctx.segments[: min(8, len(self.ctx.segments))]
        ref, ref_len = frontend_features(self.frontend, probe)
        ours, ours_len = fbank(probe)
        if not np.array_equal(ref_len.cpu().numpy().ravel(), ours_len.cpu().numpy()):
            raise RuntimeError(f"frame counts differ: {ref_len} vs {ours_len}")
        return self.forward_batches(
            lambda idx: fbank([self.jobs[i].audio for i in idx]),
            max_abs_diff=round(float((ref.float() - ours.float().cpu()).abs().max()), 5),
            max_abs_ref=round(float(ref.abs().max()), 3),
            fbank="batched torch Kaldi fbank + LFR + CMVN on " + self.device,
        )

    def overlap(self) -> dict:
        pin = self.device.startswith("cuda")

        def prepare(idx: list[int]) -> tuple[Any, Any]:
            feats, lengths = self.cpu_features(idx)
            return (feats.pin_memory() if pin else feats), lengths

        threads = self.ctx.args.prep_threads
        return self.forward_batches(
            prepare,
            threads,
            prep_threads=threads,
            scope="row c's batches; CPU fbank in a thread pool ahead of the forwards",
        )
