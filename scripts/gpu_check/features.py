"""The batched torch fbank (row g_gpu_fbank), FunASR's own CPU features, and row f (OOM)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from scripts.gpu_check.prepare import MAX_SEGMENT_S, SAMPLE_RATE_HZ, Context, release


class TorchFbank:
    """FunASR ``WavFrontend`` (Kaldi fbank, LFR, CMVN) as batched torch ops on any device.

    Kaldi's defaults as FunASR calls them: 25 ms hamming frames every 10 ms, snip_edges,
    DC removal, pre-emphasis 0.97, 512-point power spectrum, 80 mel bins 20 Hz..Nyquist,
    natural log floored at float32 epsilon; then low frame rate stacking (m frames every
    n, edges repeated) and ``(x + shift) * scale``. One call handles a whole padded batch.
    """

    def __init__(self, frontend: Any, device: str) -> None:
        import torch

        from serve_app.vad.kaldi_fbank import mel_banks

        self.device = torch.device(device)
        self.fs = int(frontend.fs)
        self.n_mels = int(frontend.n_mels)
        self.win = int(frontend.frame_length * self.fs / 1000)
        self.hop = int(frontend.frame_shift * self.fs / 1000)
        self.lfr_m, self.lfr_n = int(frontend.lfr_m), int(frontend.lfr_n)
        self.upscale = bool(getattr(frontend, "upsacle_samples", True))
        if str(frontend.window) != "hamming" or not getattr(frontend, "snip_edges", True):
            raise ValueError("TorchFbank implements the hamming/snip_edges frontend only")
        self.n_fft = 1 << (self.win - 1).bit_length()
        n = torch.arange(self.win, dtype=torch.float64)
        window = 0.54 - 0.46 * torch.cos(2 * math.pi * n / (self.win - 1))
        self.window = window.float().to(self.device)
        # Kaldi's triangles over the bins below Nyquist: the VAD frontend's own banks.
        banks = mel_banks(self.n_mels, self.n_fft, float(self.fs), 20.0, 0.0)
        self.mel = banks.T.contiguous().to(self.device)  # (n_fft // 2, n_mels)
        cmvn = frontend.cmvn
        self.cmvn = None if cmvn is None else torch.as_tensor(cmvn).float().to(self.device)

    def __call__(self, audio: Sequence[np.ndarray]) -> tuple[Any, Any]:
        """(features (B, T, n_mels * lfr_m) float32, lengths (B,) int32) on ``device``."""
        import torch

        lengths = torch.tensor([len(a) for a in audio], dtype=torch.long)
        padded = torch.zeros(len(audio), int(lengths.max()), dtype=torch.float32)
        for i, samples in enumerate(audio):
            padded[i, : len(samples)] = torch.from_numpy(np.asarray(samples, dtype=np.float32))
        x = padded.to(self.device, non_blocking=True)
        if self.upscale:
            x = x * 32768.0
        num_frames = torch.clamp(1 + (lengths - self.win) // self.hop, min=0).to(self.device)
        frames = x.unfold(1, self.win, self.hop)  # (B, F, win)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - 0.97 * prev) * self.window
        spectrum = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2)[..., : self.n_fft // 2]
        fbank = torch.log(torch.clamp(spectrum @ self.mel, min=torch.finfo(torch.float32).eps))
        # LFR: output j stacks frames j*n - (m-1)/2 ... + m - 1, clamped to each item's range.
        out_len = torch.div(num_frames + self.lfr_n - 1, self.lfr_n, rounding_mode="floor")
        t_out = int(out_len.max())
        j = torch.arange(t_out, device=self.device)[:, None] * self.lfr_n
        k = torch.arange(self.lfr_m, device=self.device)[None, :] - (self.lfr_m - 1) // 2
        idx = (j + k)[None, :, :].clamp(min=0)
        idx = torch.minimum(idx, (num_frames - 1).clamp(min=0)[:, None, None])
        b = fbank.size(0)
        stacked = torch.gather(fbank, 1, idx.reshape(b, -1, 1).expand(-1, -1, self.n_mels)).reshape(
            b, t_out, self.lfr_m * self.n_mels
        )
        if self.cmvn is not None:
            stacked = (stacked + self.cmvn[0]) * self.cmvn[1]
        valid = torch.arange(t_out, device=self.device)[None, :] < out_len[:, None]
        return stacked * valid[..., None], out_len.to(torch.int32)


def frontend_features(frontend: Any, audio: Sequence[np.ndarray]) -> tuple[Any, Any]:
    """FunASR's own CPU path: ``extract_fbank`` with the model's frontend."""
    from funasr.utils.load_utils import extract_fbank

    return extract_fbank(
        [np.ascontiguousarray(a, dtype=np.float32) for a in audio], frontend=frontend
    )


def fbank_lengths(backend: Any, lengths: Any) -> Any:
    """Paraformer's fbank input path squeezes the last axis of the lengths, SenseVoice's
    takes them as they are."""
    return lengths if backend.family == "sensevoice" else lengths[:, None]


def texts_of_raw(backend: Any, raws: Sequence[tuple[Any, list[int]]], count: int) -> list[str]:
    """Texts, in job order, from ``module.inference`` outputs keyed ``i<job index>``, through
    the backend's own post-processing (as ``forward`` returns them)."""
    from serve_app.core.types import RecognitionOptions

    texts = [""] * count
    for raw, idx in raws:
        results = raw[0] if isinstance(raw, tuple) else raw
        by_key = {r["key"]: r for r in results or []}
        for i in idx:
            result = by_key.get(f"i{i}", {"key": f"i{i}", "text": ""})
            texts[i] = backend._transcript(result, RecognitionOptions()).text
    return texts


def same_text(results_c: dict, texts: Sequence[str]) -> float | None:
    """Fraction of segments whose text equals row c's (None without row c)."""
    ref = results_c.get("texts")
    if not ref or len(ref) != len(texts):
        return None
    return round(sum(a == b for a, b in zip(ref, texts)) / len(ref), 4)


def torch_inference() -> Any:
    import torch

    return torch.inference_mode()


class OomRecordingBackend:
    """Wraps a backend: records the exceptions its forwards raise; on CPU (``simulate``)
    raises ``torch.cuda.OutOfMemoryError`` for batches over ``max_items``."""

    def __init__(self, inner: Any, *, simulate_over_items: int | None) -> None:
        self.inner = inner
        self.simulate_over_items = simulate_over_items
        self.errors: list[str] = []
        self.forward_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:  # name, group_key, warmup: the backend's
        return getattr(self.inner, name)

    def forward(self, jobs: Sequence[Any]) -> list[Any]:
        import torch

        self.forward_sizes.append(len(jobs))
        try:
            if self.simulate_over_items is not None and len(jobs) > self.simulate_over_items:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory (simulated on CPU: {len(jobs)} items)"
                )
            return list(self.inner.forward(jobs))
        except Exception as exc:
            self.errors.append(f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]}")
            raise


def oom_split(ctx: Context, backend: Any, max_items: int) -> dict:
    """Row f: an oversized batch that runs out of memory, is split, and finishes."""
    import torch

    from serve_app.core.types import SegmentJob, SegmentTranscript
    from serve_app.recognizers.base import BatchedRecognizer

    device = ctx.device
    rng = np.random.default_rng(1)
    seg_s = 4.0 if ctx.args.tiny else MAX_SEGMENT_S
    count = 8 if ctx.args.tiny else ctx.args.oom_items
    jobs = [
        SegmentJob(audio=rng.normal(0.0, 0.05, int(seg_s * SAMPLE_RATE_HZ)).astype(np.float32))
        for _ in range(count)
    ]
    cuda = device.startswith("cuda")
    notes = []
    if cuda:
        # Cap the allocator just above what half the batch needs: the whole batch then
        # raises a real torch.cuda.OutOfMemoryError, and its halves fit.
        release(device)
        base = torch.cuda.memory_reserved()
        torch.cuda.reset_peak_memory_stats()
        with torch_inference():
            backend.forward(jobs[: count // 2])
        torch.cuda.synchronize()
        half_need = torch.cuda.max_memory_reserved() - base
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        release(device)
        cap = base + int(1.3 * half_need)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        notes.append(
            f"allocator capped at {cap / 2**30:.2f} GiB (reserved before {base / 2**30:.2f} GiB, "
            f"half the batch needs {half_need / 2**30:.2f} GiB more)"
        )
        wrapper = OomRecordingBackend(backend, simulate_over_items=None)
    else:
        wrapper = OomRecordingBackend(backend, simulate_over_items=max(1, count // 4))
        notes.append(
            f"simulated on cpu: the wrapper raises OutOfMemoryError above {count // 4} items"
        )
    runner = BatchedRecognizer(wrapper, max_forward_audio_s=1e9, max_batch_items=count)
    try:
        started = time.perf_counter()
        results = runner.transcribe_batch(jobs)
        wall_s = time.perf_counter() - started
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
            release(device)
    stats = runner.last_stats
    finished = sum(isinstance(r, SegmentTranscript) for r in results)
    oom_errors = [e for e in wrapper.errors if "OutOfMemoryError" in e or "out of memory" in e]
    out = {
        "items": count,
        "item_s": seg_s,
        "finished_items": finished,
        "all_finished": finished == count,
        "oom_splits": stats.num_oom_splits,
        "oom_errors_seen": len(oom_errors),
        "first_error": wrapper.errors[0] if wrapper.errors else None,
        "forward_sizes": wrapper.forward_sizes,
        "wall_s": round(wall_s, 3),
        "simulated": not cuda,
        "notes": "; ".join(notes),
    }
    if finished != count:
        failed = next((r for r in results if not isinstance(r, SegmentTranscript)), None)
        return {
            **out,
            "status": "error",
            "reason": f"{count - finished} of {count} items "
            f"failed after {stats.num_oom_splits} splits: {failed}",
        }
    if not stats.num_oom_splits:
        return {**out, "status": "error", "reason": "the batch did not run out of memory"}
    return out
