"""The punctuation section's validation: which models get a stage, and why not. (What each
backend says it can do and the 400s for what it cannot are tested next to the backends'
own fixtures: tests/recognizers/test_funasr_backend.py, test_whisper_backend.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.config import PunctuationSettings, RecognizerSettings
from serve_app.punctuation.stage import punctuation_for, self_punctuating_reason


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
