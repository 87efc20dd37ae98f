"""Speech detection: one plain class shared by Serve and Ray Data, two real VADs behind it.

- ``fsmn``: FunASR's FSMN-VAD (``FsmnVADStreaming``). FunASR's ``inference`` drives its
  chunked frontend and the FSMN network (torch, or with ``fsmn_runtime: onnx`` ONNX
  Runtime over the folder's ``model.onnx``: same weights, same streaming caches); the
  fbank is ``serve_app.vad.kaldi_fbank`` (batched; ``fsmn_fbank: funasr`` keeps FunASR's) and
  the per-frame span decision is our port of FunASR's state machine
  (``serve_app.vad.fsmn_machine``, identical spans). Together 8.2-8.7 -> 5.1 CPU-s per 30
  minutes of audio on one core.
- ``silero``: Silero VAD v6 exactly as faster-whisper runs it for its own ``vad_filter``
  (``faster_whisper.vad``; the ONNX file ships inside the installed package, no hub).

Both feed the same post-processing (:func:`serve_app.core.segmentation.postprocess_spans`).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serve_app.config import VadSettings
from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.modelref import resolve_model_ref
from serve_app.core.segmentation import PauseSettings, SpeechSegment, postprocess_spans
from serve_app.vad import kaldi_fbank
from serve_app.vad.fsmn_machine import FrameCollector, FsmnOptions

logger = logging.getLogger(__name__)

_SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000


class SpanDetector(Protocol):
    def speech_spans_ms(self, samples: np.ndarray) -> list[tuple[int, int]]: ...


def _onnx_session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _onnx_fsmn_encoder(model_onnx: Path, threads: int) -> Any:
    """A torch module with FunASR's FSMN encoder call signature, ``(feats, cache) ->
    scores``, that runs the exported ``model.onnx``. The four FSMN layers' left-context
    caches live in FunASR's per-file ``cache["encoder"]`` dict as they do for torch, so
    long files (processed in 60 s chunks) carry context across chunks the same way."""
    import torch

    session = _onnx_session(str(model_onnx), threads)
    cache_inputs = [(i.name, i.shape) for i in session.get_inputs() if i.name != "speech"]

    class OnnxFsmnEncoder(torch.nn.Module):
        def forward(self, feats: torch.Tensor, cache: dict[str, Any]) -> torch.Tensor:
            feed = {"speech": feats.detach().cpu().numpy().astype(np.float32, copy=False)}
            for name, shape in cache_inputs:
                feed[name] = cache.get(name, np.zeros(shape, dtype=np.float32))
            logits, *caches = session.run(None, feed)
            for (name, _), value in zip(cache_inputs, caches):
                cache[name] = value
            return torch.from_numpy(logits)

    return OnnxFsmnEncoder()


class FsmnSpans:
    """FunASR FSMN-VAD spans. The model call is serialised by a lock: FunASR keeps the
    thresholds of the running file in the model's options while it runs."""

    def __init__(self, settings: VadSettings, *, models_dir: Path | None = None) -> None:
        from serve_app.recognizers.funasr_loader import load_with_funasr

        self.settings = settings
        model_path = resolve_model_ref(settings.model, models_dir)

        def build() -> Any:
            from funasr import AutoModel  # heavy import, kept off module import

            return AutoModel(
                model=model_path,
                device=settings.device,
                disable_update=True,
                disable_pbar=True,
                disable_log=True,
                ncpu=settings.cpu_threads,  # the loader calls torch.set_num_threads(ncpu)
            )

        self._auto = load_with_funasr(build)
        if settings.fsmn_runtime == "onnx":
            model_onnx = Path(model_path) / "model.onnx"
            if not model_onnx.is_file():
                raise FileNotFoundError(f"fsmn_runtime onnx needs {model_onnx}")
            self._auto.model.encoder = _onnx_fsmn_encoder(model_onnx, settings.cpu_threads)
        if settings.fsmn_fbank == "batched":
            kaldi_fbank.install(self._auto.kwargs["frontend"])
        # FunASR still runs the chunked frontend and the encoder; the per-frame span
        # decision is our port of its state machine (serve_app.vad.fsmn_machine), ~10x cheaper.
        self._frames = FrameCollector(self._auto.model)
        self._options = FsmnOptions.from_vad_opts(
            self._auto.model.vad_opts,
            end_silence_ms=settings.end_silence_ms,
            speech_noise_thres=settings.fsmn_speech_noise_thres,
        )
        self._kwargs = {k: v for k, v in self._auto.kwargs.items() if k not in ("model", "cache")}
        # Passing max_end_silence_time also turns off FunASR's dynamic silence schedule
        # (2 s end silence for the first 60 s of a file, then 0.1 s; see VadSettings).
        self._kwargs["max_end_silence_time"] = settings.end_silence_ms
        self._kwargs["speech_noise_thres"] = settings.fsmn_speech_noise_thres
        self._lock = threading.Lock()

    def speech_spans_ms(self, samples: np.ndarray) -> list[tuple[int, int]]:
        if len(samples) == 0:
            return []
        import torch

        # No autograd: FunASR's ``AutoModel.generate`` wraps ``inference`` in no_grad,
        # calling it directly did not, and every 60 s chunk's activations stayed alive
        # through the encoder's cache until the call ended (~80 MB per minute of audio:
        # 5 GB for one hour-long upload).
        with self._lock, torch.no_grad():
            self._frames.reset()
            # A fresh cache per call: FSMN-VAD is a streaming model and would otherwise
            # carry state from one request into the next.
            self._auto.model.inference(
                data_in=[np.ascontiguousarray(samples, dtype=np.float32)],
                key=["vad"],
                cache={},
                **self._kwargs,
            )
            return self._frames.spans_ms(self._options)


class SileroSpans:
    """Silero VAD spans through faster-whisper's own implementation (thread-safe: each
    call keeps its LSTM state local; ONNX Runtime sessions may be shared by threads)."""

    def __init__(self, settings: VadSettings) -> None:
        from faster_whisper import vad as fw_vad  # heavy import, kept off module import

        self._fw_vad = fw_vad
        # Padding and click removal are postprocess_spans' job, the same for both VADs.
        self._options = fw_vad.VadOptions(
            threshold=settings.silero_threshold,
            min_silence_duration_ms=settings.end_silence_ms,
            min_speech_duration_ms=0,
            speech_pad_ms=0,
        )

    def speech_spans_ms(self, samples: np.ndarray) -> list[tuple[int, int]]:
        if len(samples) == 0:
            return []
        audio = np.ascontiguousarray(samples, dtype=np.float32)
        spans = self._fw_vad.get_speech_timestamps(audio, self._options)
        return [
            (int(s["start"]) // _SAMPLES_PER_MS, -(-int(s["end"]) // _SAMPLES_PER_MS))
            for s in spans
        ]


class Vad:
    """Speech segments of an audio: the configured VAD plus segment post-processing.

    ``segments(samples)`` returns speech segments in the audio's own time, each at most
    ``settings.max_segment_s`` long and cut at real pauses where one must be cut; silence
    gives an empty list. Thread-safe.
    """

    def __init__(self, settings: VadSettings, *, models_dir: Path | None = None) -> None:
        self.settings = settings
        self._detector: SpanDetector
        if settings.backend == "silero":
            self._detector = SileroSpans(settings)
        else:
            self._detector = FsmnSpans(settings, models_dir=models_dir)
        self._pauses = PauseSettings(
            min_pause_ms=settings.pause_min_ms, depth_db=settings.pause_depth_db
        )

    @property
    def name(self) -> str:
        """Metric tag of the model: fsmn-vad, fsmn-vad-onnx or silero-vad."""
        s = self.settings
        if s.backend == "silero":
            return "silero-vad"
        return "fsmn-vad-onnx" if s.fsmn_runtime == "onnx" else "fsmn-vad"

    def speech_spans_ms(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Raw VAD output: [start_ms, end_ms] spans of speech."""
        return self._detector.speech_spans_ms(samples)

    def segments(self, samples: np.ndarray) -> list[SpeechSegment]:
        s = self.settings
        return postprocess_spans(
            self.speech_spans_ms(samples),
            samples,
            max_segment_s=s.max_segment_s,
            merge_gap_ms=s.merge_gap_ms,
            min_segment_ms=s.min_segment_ms,
            pad_ms=s.pad_ms,
            pauses=self._pauses,
        )

    def warmup(self) -> None:
        rng = np.random.default_rng(0)
        self.segments((rng.standard_normal(16_000) * 0.01).astype(np.float32))


# The name the Ray Data job, the benchmark and older code use; it honours vad.backend.
FsmnVad = Vad
