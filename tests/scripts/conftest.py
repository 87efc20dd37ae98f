"""The served test app of tests/serve (its fixtures, imported: pytest finds a fixture in the
conftest of a test's folder or above), for the fuzz test's HTTP part."""

from tests.serve.conftest import asr_url, http

__all__ = ["asr_url", "http"]
