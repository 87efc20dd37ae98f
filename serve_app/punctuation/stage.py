"""Which recognizers get a punctuation stage, and the stage's plain object, built once.

Used by the app builder (one punctuation deployment per recognizer with a ``punctuation``
section) and by the offline job's recognize actor (the same object, no Serve), so both
punctuate with the same windows and the same model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from serve_app.config import PunctuationSettings, RecognizerSettings
from serve_app.punctuation.base import BatchedPunctuator

logger = logging.getLogger(__name__)

# FunASR model classes whose text is already punctuated (SenseVoice: with its ITN, which
# the factory always turns on).
SELF_PUNCTUATING_CLASSES = frozenset({"SenseVoiceSmall"})


def _funasr_model_class(model_ref: str, models_dir: Path | None) -> str | None:
    """The ``model:`` class of a local FunASR folder's config.yaml, without loading it."""
    from serve_app.recognizers.funasr_loader import resolve_model_dir

    try:
        folder = resolve_model_dir(model_ref, models_dir)
    except FileNotFoundError:
        return None
    if folder is None:
        return None
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    return str(model) if model else None


def self_punctuating_reason(settings: RecognizerSettings, models_dir: Path | None) -> str | None:
    """Why ``settings``' model needs no punctuation stage, or None when it does."""
    if settings.backend == "whisper":
        return "Whisper's text is already punctuated"
    model_class = _funasr_model_class(settings.model, models_dir)
    if model_class in SELF_PUNCTUATING_CLASSES or (
        model_class is None and "sensevoice" in settings.model.lower()
    ):
        return "SenseVoice punctuates its own text (inverse text normalisation is on)"
    return None


def punctuation_for(
    settings: RecognizerSettings, models_dir: Path | None
) -> PunctuationSettings | None:
    """The recognizer's punctuation section, or None (off, or the model punctuates itself:
    logged with the reason, the section is ignored)."""
    if settings.punctuation is None:
        return None
    reason = self_punctuating_reason(settings, models_dir)
    if reason is not None:
        logger.warning("%s: punctuation section ignored: %s", settings.name, reason)
        return None
    return settings.punctuation


def build_punctuator(settings: PunctuationSettings, models_dir: Path | None) -> BatchedPunctuator:
    """Load and warm the CT-Transformer and wrap it in the batched stage."""
    from serve_app.punctuation.ct_transformer import CtTransformerPunctuator

    model = CtTransformerPunctuator.load(
        settings.model,
        models_dir=models_dir,
        device=settings.device,
        num_threads=settings.cpu_threads or None,
    )
    model.warmup()
    return BatchedPunctuator(
        model,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_items=settings.max_batch_items,
        core_tokens=settings.core_tokens,
        context_tokens=settings.context_tokens,
    )
