"""A tiny random-weight CT-Transformer (scripts/make_random_funasr_models.py, seed 0).

Its punctuation is meaningless: it exists for batched == one-at-a-time checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="session")
def ct_punc_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct-punc-random")
    return load_script("make_random_funasr_models").write_models(["ct-punc-tiny"], out)[
        "ct-punc-tiny"
    ]


@pytest.fixture(scope="session")
def ct_punc_tiny(ct_punc_tiny_dir: Path):
    from serve_app.punctuation.ct_transformer import CtTransformerPunctuator

    return CtTransformerPunctuator.load(str(ct_punc_tiny_dir))
