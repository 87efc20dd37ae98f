"""serve_app.vad.kaldi_fbank against FunASR's own fbank, and FSMN-VAD's spans with it.

The batched fbank is Kaldi's recipe with a different FFT and summation order, so it is
compared within a tolerance, on this machine and audio, with the fbank FunASR itself runs
(``funasr.utils.fbank.fbank``: kaldi-native-fbank here, torchaudio where installed):

- log-mel values: FunASR's two backends already differ at ~1e-5 relative; we allow an
  absolute 2e-3 in the log domain (0.2 % of an energy), measured here at ~1e-4;
- spans: a score that moves by ~1e-6 can only flip a frame lying on the threshold, which
  moves a boundary by a frame or two of the 20-frame window: same number of spans, each
  boundary within 30 ms of FunASR's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.vad import kaldi_fbank
from tests.reference import funasr_vad_spans
from tests.speech import SENTENCES, have_espeak, silence, synthesize


def _funasr_fbank(wave: torch.Tensor, window: str = "hamming") -> torch.Tensor:
    from funasr.utils import fbank as funasr_fbank

    return funasr_fbank.fbank(
        wave.unsqueeze(0),
        num_mel_bins=80,
        frame_length=25,
        frame_shift=10,
        dither=0.0,
        energy_floor=0.0,
        window_type=window,
        sample_frequency=16000,
    )


def _ours(wave: torch.Tensor, window: str = "hamming") -> torch.Tensor:
    return kaldi_fbank.fbank(
        wave,
        num_mel_bins=80,
        frame_length_ms=25,
        frame_shift_ms=10,
        sample_rate_hz=16000,
        window_type=window,
    )


@pytest.mark.parametrize("window", ["hamming", "povey"])
def test_log_mel_matches_funasr_fbank(window) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(16000 * 3) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(len(t))
    quiet = 1e-4 * rng.standard_normal(16000)
    for signal in (tone, quiet, np.zeros(4000), tone[:399], tone[:400], tone[:561]):
        wave = torch.from_numpy((signal * 32768).astype(np.float32))
        want = _funasr_fbank(wave, window)
        got = _ours(wave, window)
        assert got.shape == want.shape
        if want.numel():
            assert torch.max(torch.abs(got - want)).item() < 2e-3


@pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed")
def test_vad_spans_with_batched_fbank_match_funasr(models_dir, tmp_path) -> None:
    from serve_app.config import VadSettings
    from serve_app.vad.detectors import FsmnSpans

    before = torch.get_num_threads()
    settings = VadSettings(cpu_threads=1)
    ours = FsmnSpans(settings, models_dir=models_dir)
    reference = funasr_vad_spans(models_dir)
    torch.set_num_threads(before)
    rng = np.random.default_rng(5)
    parts = []
    for i, text in enumerate(SENTENCES[:6]):
        parts += [synthesize(text, tmp_path), silence([0.4, 1.0, 2.0][i % 3])]
    speech = np.concatenate(parts).astype(np.float32)
    clips = {
        "speech": speech,
        "noisy": (speech + 0.03 * rng.standard_normal(len(speech))).astype(np.float32),
        "long": np.tile(speech, 4)[: 16000 * 130],  # three 60 s chunks
    }
    for name, samples in clips.items():
        got = ours.speech_spans_ms(samples)
        want = reference(samples, settings)
        assert len(got) == len(want) > 0, name
        for (s1, e1), (s2, e2) in zip(got, want, strict=True):
            assert abs(s1 - s2) <= 30 and abs(e1 - e2) <= 30, (name, got, want)
