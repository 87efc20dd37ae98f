"""Speaker-embedding backends and the batched embedder.

- The batch runner shared with the recognizer isolates a bad window and splits on OOM.
- GE2E (real weights) equals Resemblyzer's own ``VoiceEncoder`` on the same audio
  (skipped where resemblyzer and its imports are not installed).
- Batched == one at a time, for GE2E and for the random-weight CAM++: bitwise for the
  same batch run twice; within a stated tolerance across batch shapes.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.core.errors import AsrError
from serve_app.core.types import EmbeddingJob
from serve_app.speakers.base import BatchedEmbedder, EmbeddingError, SpeakerEmbedder
from tests.speech import SENTENCES, have_espeak, synthesize

# Different batch shapes change the order of float32 sums in the matmuls (BLAS picks
# kernels and blockings by shape), not the maths. Through GE2E's 3 LSTM layers x 160 steps
# and CAM++'s ~50 layers those reorderings stay near float32 resolution on unit vectors;
# measured on this CPU: <= 3e-7 (GE2E) and <= 2e-7 (CAM++). 1e-5 leaves room for other
# BLAS builds while staying four orders of magnitude below what tells speakers apart
# (window-to-window cosine distances of one espeak-ng voice are ~0.1-0.2).
ACROSS_BATCH_SHAPES_ATOL = 1e-5


class FakeEmbedder:
    """Embeds a window as its mean and length; fails the way a GPU or bad input would."""

    name = "fake"
    embedding_dim = 2

    def __init__(self, *, poisoned_num_samples: int = -1, oom_above_items: int = 10**9) -> None:
        self.poisoned_num_samples = poisoned_num_samples
        self.oom_above_items = oom_above_items
        self.batch_sizes: list[int] = []

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        if any(len(w) == self.poisoned_num_samples for w in windows):
            raise ValueError("poisoned window")
        if len(windows) > self.oom_above_items:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        self.batch_sizes.append(len(windows))
        return np.array([[float(w.mean()), len(w) / 16_000] for w in windows], np.float32)

    def warmup(self) -> None:
        pass


def _jobs(durations_s: Sequence[float]) -> list[EmbeddingJob]:
    return [
        EmbeddingJob(np.full(int(d * 16_000), i, np.float32)) for i, d in enumerate(durations_s)
    ]


def test_the_fake_is_a_speaker_embedder() -> None:
    assert isinstance(FakeEmbedder(), SpeakerEmbedder)


def test_a_bad_window_fails_alone_and_order_is_kept() -> None:
    durations = [1.5, 0.7, 1.5, 1.2, 1.5, 0.4]
    jobs = _jobs(durations)
    runner = BatchedEmbedder(
        FakeEmbedder(poisoned_num_samples=len(jobs[3].audio)),
        max_forward_audio_s=60.0,
        max_batch_items=8,
    )
    results = runner.embed_batch(jobs)
    assert isinstance(results[3], EmbeddingError) and "poisoned" in results[3].message
    assert isinstance(results[3], AsrError)
    for i, result in enumerate(results):
        if i != 3:
            assert isinstance(result, np.ndarray)
            assert result.tolist() == [float(i), pytest.approx(durations[i])]
    assert runner.last_stats.num_failed_items == 1


def test_out_of_memory_halves_the_batch() -> None:
    fake = FakeEmbedder(oom_above_items=2)
    runner = BatchedEmbedder(fake, max_forward_audio_s=60.0, max_batch_items=8)
    results = runner.embed_batch(_jobs([1.5] * 7))
    assert [r[0] for r in results] == list(range(7))  # type: ignore[index]
    assert max(fake.batch_sizes) == 2 and sum(fake.batch_sizes) == 7
    assert runner.last_stats.num_oom_splits >= 1 and runner.last_stats.num_failed_items == 0


def test_windows_are_packed_by_audio_seconds() -> None:
    fake = FakeEmbedder()
    runner = BatchedEmbedder(fake, max_forward_audio_s=3.0, max_batch_items=8)
    runner.embed_batch(_jobs([1.5, 1.5, 1.5, 1.0, 1.0, 1.0]))
    # Longest first, padded cost (longest x count) <= 3 s: [1.5, 1.5], [1.5, 1.0], [1.0, 1.0].
    assert fake.batch_sizes == [2, 2, 2]
    assert runner.last_stats.padded_audio_s == pytest.approx(8.0)


# ---------------------------------------------------------------- real windows


@pytest.fixture(scope="module")
def speech_windows(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Speech windows of different lengths, several voices (different lengths on purpose)."""
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    tmp = tmp_path_factory.mktemp("tts-speakers")
    voices = ["en-us", "en-us+f3", "en+klatt"]
    out = []
    for i, sentence in enumerate(SENTENCES[:6]):
        samples = synthesize(sentence, tmp, voice=voices[i % 3])
        out.append(samples[: int(16_000 * (0.4 + 0.45 * i))])
    return out


def _alone(embedder: SpeakerEmbedder, windows: list[np.ndarray]) -> np.ndarray:
    return np.stack([embedder.embed([w])[0] for w in windows])


def import_resemblyzer(provisioned: Path):
    """Resemblyzer's own code: the installed package, else the copy that provisioning
    unpacked from the same wheel beside ``pretrained.pt`` (imported as ``resemblyzer``)."""
    try:
        import resemblyzer
    except ImportError:
        init = provisioned / "__init__.py"
        if not init.is_file():
            pytest.skip("resemblyzer's code is neither installed nor provisioned")
        spec = importlib.util.spec_from_file_location(
            "resemblyzer", init, submodule_search_locations=[str(provisioned)]
        )
        assert spec is not None and spec.loader is not None
        resemblyzer = importlib.util.module_from_spec(spec)
        sys.modules["resemblyzer"] = resemblyzer
        try:
            spec.loader.exec_module(resemblyzer)
        except ImportError as exc:  # e.g. a scipy without scipy.ndimage.morphology
            del sys.modules["resemblyzer"]
            pytest.skip(f"resemblyzer's code does not import here: {exc}")
    return resemblyzer


def test_ge2e_matches_resemblyzer(ge2e, speech_windows: list[np.ndarray]) -> None:
    """Same mel front end and same network as Resemblyzer's VoiceEncoder.embed_utterance."""
    pytest.importorskip("webrtcvad", reason="resemblyzer imports webrtcvad")
    pytest.importorskip("librosa", reason="resemblyzer imports librosa")
    resemblyzer = import_resemblyzer(ge2e.weights_path.parent)
    from resemblyzer import audio

    from serve_app.speakers import ge2e as ge2e_module

    reference = resemblyzer.VoiceEncoder("cpu", verbose=False, weights_fpath=ge2e.weights_path)
    for window in speech_windows:
        mel = audio.wav_to_mel_spectrogram(window)
        np.testing.assert_allclose(
            ge2e_module.mel_spectrogram(window), mel, rtol=1e-4, atol=1e-6 * float(mel.max())
        )
        louder = audio.normalize_volume(window, -30, increase_only=True)
        expected = reference.embed_utterance(louder)
        # float64 vs float32 front end, then the same float32 network: ~1e-7 measured.
        np.testing.assert_allclose(ge2e.embed([window])[0], expected, atol=1e-5)


def test_ge2e_batched_equals_alone(ge2e, speech_windows: list[np.ndarray]) -> None:
    batched = ge2e.embed(speech_windows)
    assert batched.shape == (len(speech_windows), 256) and batched.dtype == np.float32
    np.testing.assert_array_equal(batched, ge2e.embed(speech_windows))  # same batch: exact
    np.testing.assert_allclose(batched, _alone(ge2e, speech_windows), atol=ACROSS_BATCH_SHAPES_ATOL)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)
    # And through the runner (sorted, packed, scattered back): the same embeddings.
    runner = BatchedEmbedder(ge2e, max_forward_audio_s=4.0, max_batch_items=3)
    packed = np.stack(runner.embed_batch([EmbeddingJob(w) for w in speech_windows]))
    assert runner.last_stats.num_forward_passes > 1
    np.testing.assert_allclose(packed, batched, atol=ACROSS_BATCH_SHAPES_ATOL)


def test_ge2e_tells_two_voices_apart(ge2e, tmp_path: Path) -> None:
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    a1, a2 = (synthesize(s, tmp_path, voice="en-us") for s in SENTENCES[:2])
    b1 = synthesize(SENTENCES[2], tmp_path, voice="en-us+f3", pitch=70)
    e = ge2e.embed([a1, a2, b1])
    assert e[0] @ e[1] > e[0] @ e[2] and e[0] @ e[1] > e[1] @ e[2]


@pytest.fixture(scope="module")
def campplus(campplus_models_dir: Path):
    from serve_app.speakers.campplus import CamPlusPlusEmbedder

    return CamPlusPlusEmbedder("campplus-random", models_dir=campplus_models_dir)


@pytest.mark.slow
def test_campplus_batched_equals_alone(campplus, speech_windows: list[np.ndarray]) -> None:
    windows = [w[:24_000] for w in speech_windows[2:5]] + [speech_windows[0]]  # 3 equal + 1
    batched = campplus.embed(windows)
    assert batched.shape == (4, 192)
    np.testing.assert_array_equal(batched, campplus.embed(windows))
    np.testing.assert_allclose(batched, _alone(campplus, windows), atol=ACROSS_BATCH_SHAPES_ATOL)
    # Random weights make every embedding alike; the check still separates two windows.
    assert np.abs(batched[0] - batched[1]).max() > 100 * ACROSS_BATCH_SHAPES_ATOL


def test_campplus_rejects_a_model_that_is_not_cam_plus_plus(random_models_dir: Path) -> None:
    from serve_app.speakers.campplus import CamPlusPlusEmbedder

    with pytest.raises(ValueError, match="not a CAM"):
        CamPlusPlusEmbedder("paraformer-tiny", models_dir=random_models_dir)
