"""The UI tests reuse the session's served test app (tests/serve/conftest.py)."""

from tests.serve.conftest import (  # noqa: F401  (session fixtures)
    asr_url,
    caps_app_config,
    caps_http,
    caps_url,
    http,
    keyed_url,
    whisper_base_dir,
)
