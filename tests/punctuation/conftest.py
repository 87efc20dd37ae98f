"""The tiny random-weight CT-Transformer (``ct_punc_tiny_dir``, tests/conftest.py), loaded.

Its punctuation is meaningless: it exists for batched == one-at-a-time checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ct_punc_tiny(ct_punc_tiny_dir: Path):
    from serve_app.punctuation.ct_transformer import CtTransformerPunctuator

    return CtTransformerPunctuator.load(str(ct_punc_tiny_dir))
