"""FunASR backend on tiny random-weight models: loading, batching equivalence, options.

Random weights give gibberish text, but deterministic gibberish: a batched item must come
out exactly as the same item run alone.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.core.errors import InvalidRequestError
from serve_app.core.text import join_tokens
from serve_app.core.types import RecognitionOptions, SegmentJob, SegmentTranscript
from serve_app.recognizers import funasr_backend, funasr_loader
from serve_app.recognizers.base import AsrBackend, BatchedRecognizer
from serve_app.recognizers.funasr_backend import FunAsrBackend
from serve_app.recognizers.funasr_loader import FunAsrModelNotFoundError, load_funasr_model
from tests.speech import requires_espeak

EXPECTED_CLASSES = {
    "paraformer-tiny": "Paraformer",
    "seaco-paraformer-tiny": "SeacoParaformer",
    "sensevoice-tiny": "SenseVoiceSmall",
}


@pytest.fixture(scope="module")
def backends(random_models_dir: Path) -> dict[str, FunAsrBackend]:
    return {name: FunAsrBackend(name, models_dir=random_models_dir) for name in EXPECTED_CLASSES}


def record_inference(monkeypatch: pytest.MonkeyPatch, backend: FunAsrBackend) -> list[dict]:
    """Spy on the model's ``inference``: one dict per call (batch size + option kwargs)."""
    calls: list[dict] = []
    original: Callable[..., Any] = backend.module.inference

    def spy(*, data_in: list, key: list, **kwargs: Any) -> Any:
        calls.append(
            {
                "batch": len(data_in),
                "language": kwargs.get("language"),
                "hotword": kwargs.get("hotword"),
            }
        )
        return original(data_in=data_in, key=key, **kwargs)

    monkeypatch.setattr(backend.module, "inference", spy)
    return calls


def assert_batched_equals_sequential(
    backend: FunAsrBackend, jobs: list[SegmentJob], *, max_batch_items: int = 8
) -> list[SegmentTranscript]:
    recognizer = BatchedRecognizer(
        backend, max_forward_audio_s=60.0, max_batch_items=max_batch_items
    )
    batched = recognizer.transcribe_batch(jobs)
    assert max(recognizer.last_stats.batch_sizes) > 1, "nothing was actually batched"
    assert all(isinstance(result, SegmentTranscript) for result in batched)
    alone = [backend.forward([job])[0] for job in jobs]
    assert [r.text for r in batched] == [r.text for r in alone]  # type: ignore[union-attr]
    assert [r.words for r in batched] == [r.words for r in alone]  # type: ignore[union-attr]
    # Empty text everywhere would make the equality above meaningless.
    non_empty = sum(bool(r.text) for r in alone)
    assert non_empty >= len(jobs) - 1, [r.text for r in alone]
    return alone


# ------------------------------------------------------------------ loading


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_loads_from_a_folder_path_and_by_name_under_models_dir(
    random_models_dir: Path, name: str
) -> None:
    by_path = load_funasr_model(str(random_models_dir / name), models_dir=None)
    by_name = load_funasr_model(name, models_dir=random_models_dir)
    assert by_path.model_class == by_name.model_class == EXPECTED_CLASSES[name]
    assert by_path.source == by_name.source == str(random_models_dir / name)
    assert by_name.kwargs["frontend"].dither == 0.0  # deterministic features
    assert not by_name.module.training


def test_backend_satisfies_the_protocol(backends: dict[str, FunAsrBackend]) -> None:
    for name, backend in backends.items():
        assert isinstance(backend, AsrBackend)
        assert backend.name == name


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(FunAsrModelNotFoundError, match="not a FunASR model"):
        load_funasr_model("empty-model", models_dir=tmp_path)


@pytest.fixture(scope="module")
def funasr_imported() -> None:
    """Import funasr (seconds) outside the timed sections."""
    funasr_loader._hub_model_id("paraformer-zh", "ms")


@pytest.mark.usefixtures("funasr_imported")
def test_hub_id_fails_fast_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_OFFLINE", "1")
    monkeypatch.setenv("MODELSCOPE_CACHE", "/nonexistent-cache")
    started = time.perf_counter()
    with pytest.raises(FunAsrModelNotFoundError, match="downloads are off"):
        load_funasr_model("iic/no-such-model-for-tests", models_dir=None)
    assert time.perf_counter() - started < 5.0


@pytest.mark.usefixtures("funasr_imported")
def test_hub_id_fails_fast_when_the_hub_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASR_OFFLINE", raising=False)
    monkeypatch.delenv("FUNASR_OFFLINE", raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", "/nonexistent-cache")
    # A reserved TLD never resolves: the probe fails without reaching any network.
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "hub.invalid")
    started = time.perf_counter()
    with pytest.raises(FunAsrModelNotFoundError, match="unreachable"):
        load_funasr_model("iic/no-such-model-for-tests", models_dir=None)
    assert time.perf_counter() - started < funasr_loader.HUB_PROBE_TIMEOUT_S + 3.0


def test_hub_id_found_in_the_local_cache_loads_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, random_models_dir: Path
) -> None:
    cached = tmp_path / "models" / "iic" / "tiny-paraformer"
    shutil.copytree(random_models_dir / "paraformer-tiny", cached)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("ASR_OFFLINE", "1")
    loaded = load_funasr_model("iic/tiny-paraformer", models_dir=None)
    assert loaded.source == str(cached)


def test_half_precision_on_cpu_falls_back_to_fp32(
    random_models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=funasr_backend.__name__):
        backend = FunAsrBackend("paraformer-tiny", models_dir=random_models_dir, precision="fp16")
    assert backend.precision == "fp32"
    assert "needs CUDA" in caplog.text
    with pytest.raises(ValueError, match="precision"):
        FunAsrBackend("paraformer-tiny", models_dir=random_models_dir, precision="int4")


# ------------------------------------------------------------------ batching


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_batched_equals_sequential_on_noise(
    backends: dict[str, FunAsrBackend], noise_audio: list[np.ndarray], name: str
) -> None:
    jobs = [SegmentJob(audio=samples) for samples in noise_audio]
    assert_batched_equals_sequential(backends[name], jobs)


@pytest.mark.slow
@requires_espeak
@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_batched_equals_sequential_on_speech(
    backends: dict[str, FunAsrBackend], speech_audio: list[np.ndarray], name: str
) -> None:
    jobs = [SegmentJob(audio=samples) for samples in speech_audio]
    assert_batched_equals_sequential(backends[name], jobs, max_batch_items=5)


def test_forward_is_one_model_call_and_keeps_order(
    monkeypatch: pytest.MonkeyPatch,
    backends: dict[str, FunAsrBackend],
    noise_audio: list[np.ndarray],
) -> None:
    backend = backends["paraformer-tiny"]
    calls = record_inference(monkeypatch, backend)
    jobs = [SegmentJob(audio=samples) for samples in noise_audio[:5]]
    forward_texts = [r.text for r in backend.forward(jobs)]
    reversed_texts = [r.text for r in backend.forward(jobs[::-1])]
    assert [c["batch"] for c in calls] == [5, 5]
    assert reversed_texts == forward_texts[::-1]


def test_empty_segment_gives_empty_text_without_breaking_the_batch(
    backends: dict[str, FunAsrBackend], noise_audio: list[np.ndarray]
) -> None:
    backend = backends["paraformer-tiny"]
    empty = np.zeros(0, dtype=np.float32)
    out = backend.forward([SegmentJob(noise_audio[3]), SegmentJob(empty)])
    assert out[1] == SegmentTranscript(text="")
    assert out[0] == backend.forward([SegmentJob(noise_audio[3])])[0]


def test_paraformer_word_timestamps_lie_within_the_segment(
    backends: dict[str, FunAsrBackend], noise_audio: list[np.ndarray]
) -> None:
    samples = noise_audio[4]
    result = backends["paraformer-tiny"].forward([SegmentJob(samples)])[0]
    assert result.words, "the Paraformer family returns CIF timestamps"
    duration_s = len(samples) / 16_000
    for timing in result.words:
        assert 0.0 <= timing.start_s <= timing.end_s <= duration_s + 0.1
        assert timing.word in result.text
    starts = [timing.start_s for timing in result.words]
    assert starts == sorted(starts)


def test_join_tokens_spaces_only_between_spaced_words() -> None:
    assert join_tokens(["你", "好", "new", "york", "市"]) == "你好new york市"
    assert join_tokens([]) == ""


def test_warmup_runs(backends: dict[str, FunAsrBackend]) -> None:
    assert backends["sensevoice-tiny"].warmup() >= 0.0


# ------------------------------------------------------------------ options


def test_sensevoice_language_reaches_the_model_and_splits_batches(
    monkeypatch: pytest.MonkeyPatch,
    backends: dict[str, FunAsrBackend],
    noise_audio: list[np.ndarray],
) -> None:
    backend = backends["sensevoice-tiny"]
    languages = ["en", "zh", None, "en", "zh", None]
    jobs = [
        SegmentJob(audio=noise_audio[i % 3], options=RecognitionOptions(language=language))
        for i, language in enumerate(languages)
    ]
    calls = record_inference(monkeypatch, backend)
    recognizer = BatchedRecognizer(backend, max_forward_audio_s=60.0, max_batch_items=8)
    results = recognizer.transcribe_batch(jobs)

    assert sorted((c["language"], c["batch"]) for c in calls) == [
        ("auto", 2),
        ("en", 2),
        ("zh", 2),
    ]
    assert all(isinstance(r, SegmentTranscript) for r in results)
    assert all("<|" not in r.text for r in results)  # type: ignore[union-attr]
    # These random outputs do not start with a language tag: the requested one is reported.
    assert [r.language for r in results] == languages  # type: ignore[union-attr]
    # The language query changes the encoder input, hence the (random) output.
    texts = set()
    for language in ("en", "zh", None):
        job = SegmentJob(noise_audio[4], RecognitionOptions(language=language))
        texts.add(backend.forward([job])[0].text)
    assert len(texts) > 1, texts


def test_sensevoice_reports_a_detected_language_tag(
    monkeypatch: pytest.MonkeyPatch,
    backends: dict[str, FunAsrBackend],
    noise_audio: list[np.ndarray],
) -> None:
    backend = backends["sensevoice-tiny"]

    def fake_inference(*, data_in: list, key: list, **kwargs: Any) -> Any:
        return [
            {"key": k, "text": "<|yue|><|NEUTRAL|><|Speech|><|withitn|>你好。"} for k in key
        ], {}

    monkeypatch.setattr(backend.module, "inference", fake_inference)
    result = backend.forward([SegmentJob(noise_audio[0])])[0]
    assert result == SegmentTranscript(text="你好。", language="yue")


def test_sensevoice_rejects_unsupported_languages(
    backends: dict[str, FunAsrBackend], noise_audio: list[np.ndarray]
) -> None:
    backend = backends["sensevoice-tiny"]
    with pytest.raises(InvalidRequestError) as info:
        backend.validate_options(RecognitionOptions(language="de"))
    assert info.value.param == "language"
    backend.validate_options(RecognitionOptions(language="EN-us"))
    jobs = [
        SegmentJob(noise_audio[0], RecognitionOptions(language="de")),
        SegmentJob(noise_audio[1], RecognitionOptions(language="en")),
    ]
    results = BatchedRecognizer(
        backend, max_forward_audio_s=60.0, max_batch_items=8
    ).transcribe_batch(jobs)
    # The item keeps its typed error (the ingress maps it to 400); its batch-mate is unharmed.
    assert isinstance(results[0], InvalidRequestError)
    assert results[0].param == "language"
    assert isinstance(results[1], SegmentTranscript)


def test_seaco_hotwords_reach_the_model_and_split_batches(
    monkeypatch: pytest.MonkeyPatch,
    backends: dict[str, FunAsrBackend],
    noise_audio: list[np.ndarray],
) -> None:
    backend = backends["seaco-paraformer-tiny"]
    hotword_sets = [("丄", "ae"), (), ("乜",), ("丄", "ae"), (), ("乜",)]
    jobs = [
        SegmentJob(noise_audio[i], RecognitionOptions(hotwords=hotwords))
        for i, hotwords in enumerate(hotword_sets)
    ]
    assert len({backend.group_key(job.options) for job in jobs}) == 3
    calls = record_inference(monkeypatch, backend)
    assert_batched_equals_sequential(backend, jobs)
    batched_calls = calls[:3]
    assert sorted((c["hotword"] or "", c["batch"]) for c in batched_calls) == [
        ("", 2),
        ("丄 ae", 2),
        ("乜", 2),
    ]


def test_seaco_rejects_hotwords_funasr_would_fetch(backends: dict[str, FunAsrBackend]) -> None:
    backend = backends["seaco-paraformer-tiny"]
    for hotword in ("https://example.com/words.txt", "/etc/words.txt"):
        with pytest.raises(InvalidRequestError):
            backend.validate_options(RecognitionOptions(hotwords=(hotword,)))


def test_paraformer_ignores_options_when_grouping(backends: dict[str, FunAsrBackend]) -> None:
    backend = backends["paraformer-tiny"]
    keys = {
        backend.group_key(RecognitionOptions(language=language, hotwords=hotwords))
        for language in (None, "zh", "en")
        for hotwords in ((), ("x",))
    }
    assert keys == {None}


def _rejected_param(backend, **options) -> str | None:
    with pytest.raises(InvalidRequestError) as info:
        backend.validate_options(RecognitionOptions(**options))
    assert backend.name in info.value.message
    return info.value.param


def test_capabilities_per_family(backends: dict[str, FunAsrBackend]) -> None:
    para = backends["paraformer-tiny"].capabilities()
    seaco = backends["seaco-paraformer-tiny"].capabilities()
    sense = backends["sensevoice-tiny"].capabilities()
    assert para.word_timestamps and not para.punctuation and not para.translation
    assert para.hotwords is None and seaco.hotwords == "hotwords"
    assert sense.language_detection and set(sense.languages) == {"zh", "en", "yue", "ja", "ko"}
    assert sense.punctuation and not sense.word_timestamps and not sense.translation
    assert not any(c.diarization for c in (para, seaco, sense))


def test_rejects_what_it_cannot_honour_naming_the_option(
    backends: dict[str, FunAsrBackend],
) -> None:
    for backend in backends.values():
        assert _rejected_param(backend, task="translate") == "task"
        assert _rejected_param(backend, prompt="hello") == "prompt"
    assert _rejected_param(backends["paraformer-tiny"], hotwords=("x",)) == "hotwords"
    sense = backends["sensevoice-tiny"]
    assert _rejected_param(sense, word_timestamps=True) == "timestamp_granularities"
    backends["paraformer-tiny"].validate_options(RecognitionOptions(word_timestamps=True))
    backends["seaco-paraformer-tiny"].validate_options(RecognitionOptions(hotwords=("x",)))
