"""Kaldi log-mel filterbank features for a whole chunk at once (FSMN-VAD's frontend).

FunASR's frontends call ``funasr.utils.fbank.fbank``, which runs torchaudio's Kaldi
compliance code when torchaudio is installed and otherwise ``kaldi_native_fbank`` frame
by frame (this project's install: no torchaudio). For FSMN-VAD that was the largest cost
left after :mod:`serve_app.vad.fsmn_machine` (3.4 of 6.5 CPU-s per 30 minutes of audio on one
core): the network itself is tiny. This is Kaldi's recipe (snip edges, DC removal,
pre-emphasis, window, power spectrum, Kaldi's triangular mel banks, log) as a handful of
batched torch ops over all frames of a chunk.

It is not bit-identical to either FunASR backend (FFT and summation order differ; the
two FunASR backends are not identical to each other either): log-mel values are tested
within 2e-3 of FunASR's fbank and the VAD's spans are compared with FunASR's in
``tests/vad/test_kaldi_fbank.py``.
Only the VAD's own frontend instance uses it (:func:`install`); FunASR's module
functions and every other model's frontend are left alone.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch

_FLT_EPSILON = 1.1920928955078125e-07


def _mel(freq_hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log(1.0 + freq_hz / 700.0)


@lru_cache(maxsize=8)
def mel_banks(
    num_bins: int, padded_length: int, sample_rate_hz: float, low_hz: float, high_hz: float
) -> torch.Tensor:
    """Kaldi's ``MelBanks`` weights, (num_bins, padded_length // 2): triangles in mel
    between neighbouring centres, over the FFT bins below Nyquist (Kaldi drops the last)."""
    nyquist = 0.5 * sample_rate_hz
    high = high_hz if high_hz > 0 else nyquist + high_hz
    num_fft_bins = padded_length // 2
    mel_low, mel_high = _mel(torch.tensor(low_hz)), _mel(torch.tensor(high))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel(torch.arange(num_fft_bins, dtype=torch.float64) * (sample_rate_hz / padded_length))
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.where(mel <= center, up, down)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros(()))
    return weights.to(torch.float32)


@lru_cache(maxsize=8)
def _window(kind: str, length: int) -> torch.Tensor:
    a = 2 * math.pi / (length - 1)
    i = torch.arange(length, dtype=torch.float64)
    if kind == "hamming":
        w = 0.54 - 0.46 * torch.cos(a * i)
    elif kind == "hanning":
        w = 0.5 - 0.5 * torch.cos(a * i)
    elif kind == "povey":
        w = (0.5 - 0.5 * torch.cos(a * i)) ** 0.85
    elif kind == "rectangular":
        w = torch.ones(length, dtype=torch.float64)
    else:
        raise ValueError(f"window {kind!r} is not supported here")
    return w.to(torch.float32)


def fbank(
    waveform: torch.Tensor,
    *,
    num_mel_bins: int,
    frame_length_ms: float,
    frame_shift_ms: float,
    sample_rate_hz: float,
    window_type: str,
    preemphasis: float = 0.97,
    low_hz: float = 20.0,
    high_hz: float = 0.0,
) -> torch.Tensor:
    """(num_frames, num_mel_bins) log-mel energies of a 1-D waveform, Kaldi's
    ``compute-fbank-feats`` defaults with ``snip_edges``, no dither, no energy."""
    length = int(sample_rate_hz * frame_length_ms / 1000)
    shift = int(sample_rate_hz * frame_shift_ms / 1000)
    wave = waveform.reshape(-1).to(torch.float32)
    if wave.numel() < length:
        return torch.zeros((0, num_mel_bins), dtype=torch.float32)
    padded = 1 << (length - 1).bit_length()
    frames = wave.unfold(0, length, shift)  # (num_frames, length), a view
    frames = frames - frames.mean(dim=1, keepdim=True)
    if preemphasis:
        frames = torch.cat(
            (frames[:, :1] * (1 - preemphasis), frames[:, 1:] - preemphasis * frames[:, :-1]),
            dim=1,
        )
    frames = frames * _window(window_type, length)
    spectrum = torch.fft.rfft(frames, n=padded)
    power = spectrum.real.square() + spectrum.imag.square()
    banks = mel_banks(num_mel_bins, padded, float(sample_rate_hz), low_hz, high_hz)
    energies = power[:, : padded // 2] @ banks.T
    return energies.clamp_min(_FLT_EPSILON).log()


def install(frontend: Any) -> None:
    """Make one FunASR ``WavFrontendOnline`` instance use :func:`fbank`.

    A copy of FunASR 1.4's ``WavFrontendOnline.forward_fbank`` (the input cache between
    chunks, the exact waveform span of the frames) with the fbank call replaced; bound to
    this instance only."""
    if frontend.dither:
        raise ValueError("the batched fbank has no dither; FSMN-VAD's config sets 0")

    def forward_fbank(
        input: torch.Tensor, input_lengths: torch.Tensor, cache: dict, **_: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch_size = input.size(0)
        input = torch.cat((cache["input_cache"], input), dim=1)
        frame_num = frontend.compute_frame_num(
            input.shape[-1], frontend.frame_sample_length, frontend.frame_shift_sample_length
        )
        cache["input_cache"] = input[
            :, -(input.shape[-1] - frame_num * frontend.frame_shift_sample_length) :
        ]
        waveforms: Any = torch.empty(0)
        feats_pad: Any = torch.empty(0)
        feats_lens: Any = torch.empty(0)
        if frame_num:
            used = (frame_num - 1) * frontend.frame_shift_sample_length
            used += frontend.frame_sample_length
            waves = [input[i][:used] for i in range(batch_size)]
            feats = [
                fbank(
                    w * (1 << 15),
                    num_mel_bins=frontend.n_mels,
                    frame_length_ms=frontend.frame_length,
                    frame_shift_ms=frontend.frame_shift,
                    sample_rate_hz=frontend.fs,
                    window_type=frontend.window,
                )
                for w in waves
            ]
            waveforms = torch.stack(waves)
            feats_lens = torch.as_tensor([f.size(0) for f in feats])
            feats_pad = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        cache["fbanks"] = feats_pad
        cache["fbanks_lens"] = feats_lens.clone()
        return waveforms, feats_pad, feats_lens

    frontend.forward_fbank = forward_fbank
