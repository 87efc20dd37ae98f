"""What each backend says it can do (``GET /v1/models``) and the 400s for what it cannot,
plus the punctuation section's validation (which models get a stage and why not)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.config import PunctuationSettings, RecognizerSettings
from serve_app.errors import InvalidRequestError
from serve_app.punctuation.stage import punctuation_for, self_punctuating_reason
from serve_app.recognizers.base import RecognitionOptions
from serve_app.recognizers.funasr_backend import FunAsrBackend
from serve_app.recognizers.whisper_backend import WhisperBackend


@pytest.fixture(scope="module")
def funasr(random_models_dir: Path) -> dict[str, FunAsrBackend]:
    names = ("paraformer-tiny", "seaco-paraformer-tiny", "sensevoice-tiny")
    return {name: FunAsrBackend(name, models_dir=random_models_dir) for name in names}


def _param(backend, **options) -> str | None:
    with pytest.raises(InvalidRequestError) as info:
        backend.validate_options(RecognitionOptions(**options))
    assert backend.name in info.value.message
    return info.value.param


def test_funasr_capabilities(funasr) -> None:
    para = funasr["paraformer-tiny"].capabilities()
    seaco = funasr["seaco-paraformer-tiny"].capabilities()
    sense = funasr["sensevoice-tiny"].capabilities()
    assert para.word_timestamps and not para.punctuation and not para.translation
    assert para.hotwords is None and seaco.hotwords == "hotwords"
    assert sense.language_detection and set(sense.languages) == {"zh", "en", "yue", "ja", "ko"}
    assert sense.punctuation and not sense.word_timestamps and not sense.translation
    assert not any(c.diarization for c in (para, seaco, sense))


def test_funasr_rejects_what_it_cannot_honour_naming_the_option(funasr) -> None:
    for backend in funasr.values():
        assert _param(backend, task="translate") == "task"
        assert _param(backend, prompt="hello") == "prompt"
    assert _param(funasr["paraformer-tiny"], hotwords=("x",)) == "hotwords"
    assert _param(funasr["sensevoice-tiny"], word_timestamps=True) == "timestamp_granularities"
    funasr["paraformer-tiny"].validate_options(RecognitionOptions(word_timestamps=True))
    funasr["seaco-paraformer-tiny"].validate_options(RecognitionOptions(hotwords=("x",)))


def test_whisper_capabilities_and_language_check(models_dir: Path) -> None:
    english = WhisperBackend(str(models_dir / "whisper-tiny.en"), compute_type="int8")
    caps = english.capabilities()
    assert caps.languages == ("en",) and not caps.translation and not caps.language_detection
    assert caps.word_timestamps and caps.punctuation and caps.hotwords == "prompt"
    assert english.capabilities().to_json()["diarization"] is False


def _recognizer(model: str, backend: str = "funasr", **extra) -> RecognizerSettings:
    return RecognizerSettings(name="m", backend=backend, model=model, **extra)  # type: ignore[arg-type]


def test_punctuation_section_validation(random_models_dir: Path) -> None:
    with pytest.raises(ValidationError, match="Whisper's text is already punctuated"):
        _recognizer("whisper-tiny.en", "whisper", punctuation={})
    with pytest.raises(ValidationError, match="max_batch_tokens"):
        PunctuationSettings(core_tokens=100, context_tokens=20, max_batch_tokens=100)
    para = _recognizer("paraformer-tiny", punctuation={"model": "ct-punc"})
    assert punctuation_for(para, random_models_dir) == para.punctuation
    assert punctuation_for(_recognizer("paraformer-tiny"), random_models_dir) is None
    sense = _recognizer("sensevoice-tiny", punctuation={})
    assert "SenseVoice" in (self_punctuating_reason(sense, random_models_dir) or "")
    assert punctuation_for(sense, random_models_dir) is None  # ignored, with a warning
