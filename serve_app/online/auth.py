"""Optional API keys: ``Authorization: Bearer <key>``, checked in constant time.

Keys never come from the config in git. They are read once, where the ingress starts,
from the environment:

- ``ASR_API_KEYS``: comma-separated keys;
- ``ASR_API_KEYS_FILE``: a file with one key per line (blank lines and ``#`` comments
  ignored), e.g. a Kubernetes Secret mounted as a volume.

Both may be set; the keys are the union. With no key at all the service is open (the
default, for local use). With keys, every route but the health probes (``/healthz``,
``/health``, open here) and the pages a browser loads without a key (the UI's files,
``/docs`` and ``/openapi.json``: serve_app.online.routes) needs one of them; a missing or
wrong key is an :class:`UnauthorizedError`, which the ingress answers, before routing and
before reading a body, with a 401 in OpenAI's shape (``code: invalid_api_key``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from serve_app.core.errors import UnauthorizedError

KEYS_ENV = "ASR_API_KEYS"
KEYS_FILE_ENV = "ASR_API_KEYS_FILE"
# Probes (Kubernetes readiness, load balancers) carry no key.
OPEN_PATHS = frozenset({"/healthz", "/health"})
_BEARER = "bearer"


class ApiKeys:
    """The accepted keys; empty means authentication is off."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        cleaned = {k.strip() for k in keys if k.strip()}
        if any(any(c.isspace() for c in k) for k in cleaned):
            raise ValueError("an API key must not contain whitespace")
        # SHA-256 digests: compare_digest then always compares 32 bytes, so neither the
        # time nor an early length mismatch tells a caller how long a key is.
        self._keys = tuple(sorted(_digest(k) for k in cleaned))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiKeys:
        """Keys from ``ASR_API_KEYS`` and the file named by ``ASR_API_KEYS_FILE``.

        Raises ``ValueError`` when the file is named but cannot be read or holds no key:
        a deployment that meant to be protected must not start open.
        """
        env = os.environ if environ is None else environ
        keys = env.get(KEYS_ENV, "").split(",")
        path = env.get(KEYS_FILE_ENV, "").strip()
        if path:
            try:
                text = Path(path).expanduser().read_text()
            except OSError as exc:
                raise ValueError(f"{KEYS_FILE_ENV}={path!r} cannot be read: {exc}") from exc
            from_file = [line.split("#", 1)[0].strip() for line in text.splitlines()]
            from_file = [k for k in from_file if k]
            if not from_file:
                raise ValueError(f"{KEYS_FILE_ENV}={path!r} holds no key")
            keys += from_file
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, path: str, authorization: str | None) -> None:
        """Raise :class:`UnauthorizedError` unless ``path`` is open or the key is valid."""
        if not self._keys or path in OPEN_PATHS:
            return
        if not authorization:
            raise UnauthorizedError("missing API key: send it as 'Authorization: Bearer <key>'")
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != _BEARER or not presented.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <key>'")
        if not self.matches(presented.strip()):
            raise UnauthorizedError("incorrect API key provided")

    def matches(self, presented: str) -> bool:
        """Constant-time comparison with every key (no early exit on the first match)."""
        candidate = _digest(presented)
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(candidate, key)
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
