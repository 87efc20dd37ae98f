"""The ONNX Runtime backend against the torch backend on the same random weights.

fp32: the same graph maths on two runtimes. The log-probabilities may differ only by
float32 rounding (ONNX Runtime fuses LayerNorm/attention and orders reductions its own
way): measured at most 7.2e-6 on these models; the test allows 1e-4, 14x that and still
far below any difference a changed operation would make (a wrong mask, a missing scale or
a dropped layer moves log-probabilities by 1e-2 and more). Tokens and text must be
identical. int8 (FunASR's dynamic quantization) on random weights: token identity is no
quality measure, so only the number of tokens (the CIF predictor's count) is compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from serve_app.config import RecognizerSettings
from serve_app.core.errors import InvalidRequestError
from serve_app.core.types import RecognitionOptions, SegmentJob, SegmentTranscript
from serve_app.recognizers.base import BatchedRecognizer
from serve_app.recognizers.factory import build_backend
from serve_app.recognizers.funasr_backend import FunAsrBackend
from serve_app.recognizers.funasr_onnx import FunAsrOnnxBackend
from serve_app.recognizers.onnx_export import export_onnx
from tests.recognizers.conftest import SEGMENT_DURATIONS_S, noise_segments

FP32_LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx(random_models_dir: Path, cache_dir: Path) -> dict[str, FunAsrOnnxBackend]:
    kw: dict[str, Any] = {"models_dir": random_models_dir, "cache_dir": cache_dir, "num_threads": 1}
    return {
        "paraformer": FunAsrOnnxBackend("paraformer-tiny", **kw),
        "paraformer-int8": FunAsrOnnxBackend("paraformer-tiny", precision="int8", **kw),
        "sensevoice": FunAsrOnnxBackend("sensevoice-tiny", **kw),
    }


@pytest.fixture(scope="module")
def torch_backends(random_models_dir: Path) -> dict[str, FunAsrBackend]:
    """The torch backend as a served recognizer builds it (its default settings)."""
    return {
        family: FunAsrBackend(name, models_dir=random_models_dir)
        for family, name in (("paraformer", "paraformer-tiny"), ("sensevoice", "sensevoice-tiny"))
    }


@pytest.fixture(scope="module")
def audio(speech_audio: list[np.ndarray]) -> list[np.ndarray]:
    """Speech (espeak-ng) and speech-like noise, all of different lengths."""
    return speech_audio + noise_segments(SEGMENT_DURATIONS_S, seed=1)


def torch_paraformer_logprobs(
    backend: FunAsrBackend, speech: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """What ``Paraformer.inference`` computes before its argmax, on the same features."""
    module: Any = backend.module
    with torch.inference_mode():
        enc, enc_lens = module.encode(torch.from_numpy(speech), torch.from_numpy(lengths))
        embeds, token_num, *_ = module.calc_predictor(enc, enc_lens)
        token_num = token_num.round().long()
        decoder_out = module.cal_decoder_with_predictor(enc, enc_lens, embeds, token_num)[0]
        return torch.log_softmax(decoder_out, dim=-1).numpy(), token_num.numpy()


def test_fp32_logprobs_match_torch(
    onnx: dict[str, FunAsrOnnxBackend],
    torch_backends: dict[str, FunAsrBackend],
    audio: list[np.ndarray],
) -> None:
    speech, lengths = onnx["paraformer"].features(audio)
    logprobs, token_num = onnx["paraformer"].run_graph(speech, lengths)
    expected, expected_num = torch_paraformer_logprobs(
        torch_backends["paraformer"], speech, lengths
    )
    assert token_num.tolist() == expected_num.tolist()
    assert min(token_num) > 0
    for i, n in enumerate(token_num):
        np.testing.assert_allclose(logprobs[i, :n], expected[i, :n], rtol=0, atol=FP32_LOGPROB_ATOL)


@pytest.mark.parametrize("family", ["paraformer", "sensevoice"])
def test_fp32_text_equals_torch(
    family: str,
    onnx: dict[str, FunAsrOnnxBackend],
    torch_backends: dict[str, FunAsrBackend],
    audio: list[np.ndarray],
) -> None:
    jobs = [SegmentJob(audio=samples) for samples in audio]
    got = [r.text for r in onnx[family].forward(jobs)]
    expected = [r.text for r in torch_backends[family].forward(jobs)]
    assert got == expected
    assert sum(bool(text) for text in got) >= len(got) - 1, got


def test_int8_gives_as_many_tokens_as_fp32(
    onnx: dict[str, FunAsrOnnxBackend], audio: list[np.ndarray]
) -> None:
    speech, lengths = onnx["paraformer"].features(audio)
    logprobs, fp32_num = onnx["paraformer"].run_graph(speech, lengths)
    int8_logprobs, int8_num = onnx["paraformer-int8"].run_graph(speech, lengths)
    # Measured: 16 of 16 items. Quantized, not the same graph: the log-probabilities move.
    assert (int8_num == fp32_num).sum() >= len(audio) - 2, (int8_num, fp32_num)
    n = int(min(fp32_num[0], int8_num[0]))
    assert not np.allclose(int8_logprobs[0, :n], logprobs[0, :n], atol=FP32_LOGPROB_ATOL)


@pytest.mark.parametrize("family", ["paraformer", "sensevoice"])
def test_batched_equals_alone(
    family: str, onnx: dict[str, FunAsrOnnxBackend], audio: list[np.ndarray]
) -> None:
    backend = onnx[family]
    jobs = [SegmentJob(audio=samples) for samples in audio]
    recognizer = BatchedRecognizer(backend, max_forward_audio_s=60.0, max_batch_items=8)
    batched = recognizer.transcribe_batch(jobs)
    assert max(recognizer.last_stats.batch_sizes) > 1
    alone = [backend.forward([job])[0] for job in jobs]
    assert all(isinstance(r, SegmentTranscript) for r in batched)
    assert [r.text for r in batched] == [r.text for r in alone]  # type: ignore[union-attr]


def test_int8_batched_token_counts_equal_alone(
    onnx: dict[str, FunAsrOnnxBackend], audio: list[np.ndarray]
) -> None:
    """Dynamic int8 quantizes activations with one scale per tensor, taken over the whole
    padded batch: an item's int8 logits depend on its batch companions, so only the
    token count is stable (measured: 16 of 16 counts equal, 5 of 16 texts on these
    random weights, whose near-flat logits make every argmax fragile)."""
    backend = onnx["paraformer-int8"]
    _, batched = backend.run_graph(*backend.features(audio))
    alone = [int(backend.run_graph(*backend.features([samples]))[1][0]) for samples in audio]
    assert sum(int(b) == a for b, a in zip(batched, alone, strict=True)) >= len(audio) - 2


def test_export_is_cached_outside_the_weights(
    onnx: dict[str, FunAsrOnnxBackend], random_models_dir: Path, cache_dir: Path
) -> None:
    backend = onnx["paraformer-int8"]
    assert backend.export.folder.parent == cache_dir
    assert backend.export.int8_path is not None and backend.export.int8_path.is_file()
    assert not list((random_models_dir / "paraformer-tiny").glob("*.onnx"))
    again = FunAsrOnnxBackend("paraformer-tiny", models_dir=random_models_dir, cache_dir=cache_dir)
    assert not again.export.exported
    assert again.export.folder == backend.export.folder


def test_changed_weights_export_again(
    random_models_dir: Path, tmp_path: Path, cache_dir: Path
) -> None:
    import shutil

    from serve_app.recognizers.funasr_loader import load_funasr_model

    folder = tmp_path / "paraformer-copy"
    shutil.copytree(random_models_dir / "paraformer-tiny", folder)
    loaded = load_funasr_model(str(folder), models_dir=None)
    first = export_onnx(loaded, int8=False, cache_dir=cache_dir)
    assert first.exported
    assert not export_onnx(loaded, int8=False, cache_dir=cache_dir).exported
    (folder / "model.pt").touch()  # a new mtime: other weights as far as the key knows
    assert export_onnx(loaded, int8=False, cache_dir=cache_dir).exported


def test_threads_per_session(onnx: dict[str, FunAsrOnnxBackend]) -> None:
    options = onnx["paraformer"].session.get_session_options()
    assert options.intra_op_num_threads == 1


def test_refuses_what_the_graph_does_not_give(onnx: dict[str, FunAsrOnnxBackend]) -> None:
    backend = onnx["paraformer"]
    assert not backend.capabilities().word_timestamps
    recognizer = BatchedRecognizer(backend, max_forward_audio_s=60.0, max_batch_items=8)
    with pytest.raises(InvalidRequestError) as info:
        recognizer.validate(RecognitionOptions(word_timestamps=True))
    assert info.value.param == "timestamp_granularities"
    with pytest.raises(InvalidRequestError):
        recognizer.validate(RecognitionOptions(hotwords=("foo",)))


def test_seaco_is_refused(random_models_dir: Path, cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="SeACo"):
        FunAsrOnnxBackend(
            "seaco-paraformer-tiny", models_dir=random_models_dir, cache_dir=cache_dir
        )


def test_config_selects_the_runtime(
    random_models_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"name": "p", "backend": "funasr", "model": "paraformer-tiny"}
    assert RecognizerSettings(**base).runtime == "torch"
    with pytest.raises(ValueError, match="int8"):
        RecognizerSettings(**base, precision="int8")
    with pytest.raises(ValueError, match="runtime onnx"):
        RecognizerSettings(name="w", backend="whisper", model="tiny", runtime="onnx")
    settings = RecognizerSettings(**base, runtime="onnx", precision="int8", cpu_threads=1)
    monkeypatch.setenv("ASR_ONNX_CACHE_DIR", str(cache_dir))
    backend = build_backend(settings, random_models_dir)
    assert isinstance(backend, FunAsrOnnxBackend)
    assert backend.precision == "int8"
    assert not backend.export.exported  # the module's int8 export is found in the cache
