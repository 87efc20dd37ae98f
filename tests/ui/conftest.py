"""The UI tests reuse the session's served test app (tests/serve/conftest.py)."""

from tests.serve.conftest import asr_url, http, keyed_url  # noqa: F401  (session fixtures)
