"""Real speech of known text for the tests: espeak-ng through :mod:`serve_app.tools.speech`
(the batch tuner's corpus speaks the same way), plus the pytest skip marker."""

from __future__ import annotations

import pytest

from serve_app.tools.speech import (
    SENTENCES,
    concat_with_pauses,
    have_espeak,
    silence,
    synthesize,
    synthesize_wav,
)

__all__ = [
    "SENTENCES",
    "concat_with_pauses",
    "have_espeak",
    "requires_espeak",
    "silence",
    "synthesize",
    "synthesize_wav",
]

requires_espeak = pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed")
