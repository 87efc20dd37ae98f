"""GE2E speaker encoder (Resemblyzer's pretrained weights), re-implemented without its package.

``resemblyzer==0.1.4`` (Apache-2.0) ships ``resemblyzer/pretrained.pt``: a GE2E speaker
encoder (Wan et al. 2018) trained by Resemble AI. Its package imports ``webrtcvad`` and
``librosa`` at top level for things this service does elsewhere (VAD, loading files), so
only the weights are used (``python -m serve_app.tools.provision_models`` unpacks them
into the models folder) and the two parts that matter are re-implemented here, matched to its code:

- front end (``resemblyzer.audio.wav_to_mel_spectrogram``): librosa's
  ``melspectrogram`` at 16 kHz with a 25 ms (400-sample) periodic Hann window, a 10 ms
  (160-sample) hop, centred frames with zero padding, power 2 and 40 Slaney-normalised
  mel bands; **not** a log-mel spectrogram. Before it, the volume is raised (never
  lowered) to -30 dBFS, as ``preprocess_wav`` does.
- network (``VoiceEncoder``): a 3-layer LSTM (40 -> 256) whose last layer's final hidden
  state goes through Linear(256, 256) and ReLU and is L2-normalised; an utterance is cut
  into 160-frame (1.6 s) partials at 1.3 partials per second (the last one kept only if
  it is at least 75 % covered, zero-padded), and its embedding is the L2-normalised mean
  of its partials' (``embed_utterance``).

Every partial is exactly 160 frames, so a batch of windows of any lengths is one
``(partials, 160, 40)`` tensor with no padding between items: a window's embedding does
not depend on its batch-mates beyond floating-point summation order.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.speakers.base import l2_normalize

logger = logging.getLogger(__name__)

GE2E_FOLDER = "ge2e-resemblyzer"  # under the models folder (serve_app/tools/provision_models.py)
GE2E_WEIGHTS_FILE = "pretrained.pt"

MEL_WINDOW_SAMPLES = SAMPLE_RATE_HZ * 25 // 1000  # 400
MEL_HOP_SAMPLES = SAMPLE_RATE_HZ * 10 // 1000  # 160
NUM_MELS = 40
PARTIAL_NUM_FRAMES = 160  # 1.6 s
PARTIALS_PER_S = 1.3
PARTIAL_MIN_COVERAGE = 0.75
TARGET_DBFS = -30.0
HIDDEN_SIZE = 256
EMBEDDING_DIM = 256
NUM_LAYERS = 3
_INT16_MAX = 2**15 - 1


# ---------------------------------------------------------------- front end


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, log above."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mels = hz / f_sp
    log_region = hz >= min_log_hz
    mels[log_region] = min_log_mel + np.log(hz[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    mels = np.asarray(mels, dtype=np.float64)
    hz = f_sp * mels
    log_region = mels >= min_log_mel
    hz[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return hz


@functools.lru_cache(maxsize=4)
def mel_filterbank(
    sample_rate_hz: int = SAMPLE_RATE_HZ, n_fft: int = MEL_WINDOW_SAMPLES, num_mels: int = NUM_MELS
) -> np.ndarray:
    """``(num_mels, n_fft // 2 + 1)`` triangular Slaney-normalised filters, as librosa's
    ``filters.mel(sr, n_fft, n_mels)`` with its defaults (fmin 0, fmax sr / 2)."""
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate_hz)
    edges_hz = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate_hz / 2]))[0],
                    num_mels + 2)
    )  # fmt: skip
    widths_hz = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths_hz[:-1, None]
    upper = ramps[2:] / widths_hz[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # Slaney: equal area per band
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    # Periodic Hann (scipy's get_window("hann", n, fftbins=True)), librosa's STFT window.
    n = np.arange(MEL_WINDOW_SAMPLES)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / MEL_WINDOW_SAMPLES)).astype(np.float64)


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """``(frames, 40)`` float32 power mel spectrogram, ``1 + len // 160`` centred frames."""
    samples = np.asarray(samples, dtype=np.float64)
    half = MEL_WINDOW_SAMPLES // 2
    padded = np.pad(samples, (half, half))  # centred frames, zero padding (librosa >= 0.10)
    num_frames = 1 + len(samples) // MEL_HOP_SAMPLES
    frames = np.lib.stride_tricks.sliding_window_view(padded, MEL_WINDOW_SAMPLES)[
        ::MEL_HOP_SAMPLES
    ][:num_frames]
    power = np.abs(np.fft.rfft(frames * _hann_window(), axis=-1)) ** 2
    return (power @ mel_filterbank().T.astype(np.float64)).astype(np.float32)


def normalize_volume(samples: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise (never lower) the RMS level to ``target_dbfs``, as Resemblyzer's
    ``normalize_volume(wav, -30, increase_only=True)``; silence stays silence."""
    rms = float(np.sqrt(np.mean((samples.astype(np.float64) * _INT16_MAX) ** 2)))
    if rms <= 0.0:
        return samples
    change_db = target_dbfs - 20 * math.log10(rms / _INT16_MAX)
    if change_db <= 0:
        return samples
    return (samples * 10 ** (change_db / 20)).astype(np.float32)


def partial_frame_starts(num_samples: int) -> list[int]:
    """First mel frame of each 160-frame partial, as Resemblyzer's
    ``compute_partial_slices(num_samples, rate=1.3, min_coverage=0.75)``."""
    num_frames = int(np.ceil((num_samples + 1) / MEL_HOP_SAMPLES))
    frame_step = int(np.round((SAMPLE_RATE_HZ / PARTIALS_PER_S) / MEL_HOP_SAMPLES))
    steps = max(1, num_frames - PARTIAL_NUM_FRAMES + frame_step + 1)
    starts = list(range(0, steps, frame_step))
    last_start_sample = starts[-1] * MEL_HOP_SAMPLES
    coverage = (num_samples - last_start_sample) / (PARTIAL_NUM_FRAMES * MEL_HOP_SAMPLES)
    if coverage < PARTIAL_MIN_COVERAGE and len(starts) > 1:
        starts = starts[:-1]
    return starts


def partial_mels(samples: np.ndarray) -> np.ndarray:
    """``(partials, 160, 40)``: the volume-normalised window, zero-padded to cover its last
    partial, as mel frames cut into partials."""
    samples = normalize_volume(np.asarray(samples, dtype=np.float32))
    starts = partial_frame_starts(len(samples))
    needed = (starts[-1] + PARTIAL_NUM_FRAMES) * MEL_HOP_SAMPLES
    if needed >= len(samples):
        samples = np.pad(samples, (0, needed - len(samples)))
    mel = mel_spectrogram(samples)
    return np.stack([mel[s : s + PARTIAL_NUM_FRAMES] for s in starts])


# ---------------------------------------------------------------- network


class Ge2eNetwork(torch.nn.Module):
    """Resemblyzer's ``VoiceEncoder`` network: same module names, so its state dict loads."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(NUM_MELS, HIDDEN_SIZE, NUM_LAYERS, batch_first=True)
        self.linear = torch.nn.Linear(HIDDEN_SIZE, EMBEDDING_DIM)
        self.relu = torch.nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, 40)`` -> ``(batch, 256)`` L2-normalised partial embeddings."""
        _, (hidden, _) = self.lstm(mels)
        raw = self.relu(self.linear(hidden[-1]))
        return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)


def load_ge2e_network(weights_path: Path, device: str = "cpu") -> Ge2eNetwork:
    """Build the network and load the ``lstm.*`` / ``linear.*`` tensors of ``pretrained.pt``
    (its GE2E loss parameters, ``similarity_weight`` / ``similarity_bias``, are training-only)."""
    checkpoint = torch.load(weights_path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model_state", checkpoint)
    network = Ge2eNetwork()
    wanted = network.state_dict().keys()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(f"{weights_path} is not a GE2E checkpoint: missing {missing}")
    network.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    return network.to(device).eval()


class Ge2eEmbedder:
    """Real GE2E speaker embeddings (256-dim) implementing ``SpeakerEmbedder``.

    ``embed`` cuts every window into its 1.6 s partials, runs all partials of all windows
    as one batch and averages each window's partials (Resemblyzer's ``embed_utterance``).
    """

    def __init__(self, weights_path: Path, *, device: str = "cpu") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"GE2E weights not found at {weights_path} "
                "(run serve_app/tools/provision_models.py to unpack them from resemblyzer==0.1.4)"
            )
        started = time.perf_counter()
        self.device = device
        self.weights_path = Path(weights_path)
        self.network = load_ge2e_network(Path(weights_path), device)
        logger.info("loaded GE2E speaker encoder in %.2f s", time.perf_counter() - started)

    @classmethod
    def from_models_dir(cls, models_dir: Path, *, device: str = "cpu") -> Ge2eEmbedder:
        return cls(Path(models_dir) / GE2E_FOLDER / GE2E_WEIGHTS_FILE, device=device)

    @property
    def name(self) -> str:
        return "ge2e"

    @property
    def embedding_dim(self) -> int:
        return EMBEDDING_DIM

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        if not windows:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        if any(len(w) == 0 for w in windows):
            raise ValueError("cannot embed an empty window")
        per_window = [partial_mels(w) for w in windows]
        counts = [len(p) for p in per_window]
        with torch.inference_mode():
            batch = torch.from_numpy(np.concatenate(per_window)).to(self.device)
            partials = self.network(batch).float().cpu().numpy()
        bounds = np.cumsum([0, *counts])
        means = np.stack([partials[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
        return l2_normalize(means)

    def warmup(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        return self.embed([(0.05 * rng.standard_normal(SAMPLE_RATE_HZ)).astype(np.float32)])
