"""Optional API keys: ``Authorization: Bearer <key>``, checked in constant time.

Keys never come from the config in git. They are read once, where the ingress starts,
from the environment:

- ``ASR_API_KEYS``: comma-separated keys;
- ``ASR_API_KEYS_FILE``: a file with one key per line (blank lines and ``#`` comments
  ignored), e.g. a Kubernetes Secret mounted as a volume.

Both may be set; the keys are the union. Operator keys (``ASR_OPERATOR_KEYS``,
``ASR_OPERATOR_KEYS_FILE``, same forms) are accepted everywhere a client key is, and are
the only keys that may change the running service (:data:`OPERATOR_ROUTES`: ``POST
/v1/tune``); once any key is set, a client key there is a 403 (``permission_denied``), and
with no operator key configured nobody may tune. With no key at all the service is open (the
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

from serve_app.core.errors import PermissionDeniedError, UnauthorizedError

KEYS_ENV = "ASR_API_KEYS"
KEYS_FILE_ENV = "ASR_API_KEYS_FILE"
OPERATOR_KEYS_ENV = "ASR_OPERATOR_KEYS"
OPERATOR_KEYS_FILE_ENV = "ASR_OPERATOR_KEYS_FILE"
# (method, path) pairs that change the running service: operator keys only.
OPERATOR_ROUTES = frozenset({("POST", "/v1/tune")})
# Probes (Kubernetes readiness, load balancers) carry no key.
OPEN_PATHS = frozenset({"/healthz", "/health"})
_BEARER = "bearer"


class ApiKeys:
    """The accepted keys; empty means authentication is off."""

    def __init__(self, keys: Iterable[str] = (), operator_keys: Iterable[str] = ()) -> None:
        # SHA-256 digests: compare_digest then always compares 32 bytes, so neither the
        # time nor an early length mismatch tells a caller how long a key is.
        self._operator_keys = _digests(operator_keys)
        self._keys = tuple(sorted({*_digests(keys), *self._operator_keys}))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiKeys:
        """Keys from ``ASR_API_KEYS`` and the file named by ``ASR_API_KEYS_FILE``.

        Raises ``ValueError`` when the file is named but cannot be read or holds no key:
        a deployment that meant to be protected must not start open.
        """
        env = os.environ if environ is None else environ
        return cls(
            _keys_from(env, KEYS_ENV, KEYS_FILE_ENV),
            _keys_from(env, OPERATOR_KEYS_ENV, OPERATOR_KEYS_FILE_ENV),
        )

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, path: str, authorization: str | None, method: str = "GET") -> None:
        """Raise :class:`UnauthorizedError` unless ``path`` is open or the key is valid, and
        :class:`PermissionDeniedError` for a client key on an operator route."""
        if not self._keys or path in OPEN_PATHS:
            return
        if not authorization:
            raise UnauthorizedError("missing API key: send it as 'Authorization: Bearer <key>'")
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != _BEARER or not presented.strip():
            raise UnauthorizedError("the Authorization header must be 'Bearer <key>'")
        if not self.matches(presented.strip()):
            raise UnauthorizedError("incorrect API key provided")
        if (method.upper(), path) in OPERATOR_ROUTES and not self.matches(
            presented.strip(), operator=True
        ):
            raise PermissionDeniedError(
                f"{method.upper()} {path} needs an operator key ({OPERATOR_KEYS_ENV})"
                + ("" if self._operator_keys else "; none is configured")
            )

    def matches(self, presented: str, *, operator: bool = False) -> bool:
        """Constant-time comparison with every key (no early exit on the first match)."""
        candidate = _digest(presented)
        found = False
        for key in self._operator_keys if operator else self._keys:
            found |= hmac.compare_digest(candidate, key)
        return found


def _keys_from(env: Mapping[str, str], keys_env: str, file_env: str) -> list[str]:
    keys = env.get(keys_env, "").split(",")
    path = env.get(file_env, "").strip()
    if path:
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"{file_env}={path!r} cannot be read: {exc}") from exc
        from_file = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        from_file = [k for k in from_file if k]
        if not from_file:
            raise ValueError(f"{file_env}={path!r} holds no key")
        keys += from_file
    return keys


def _digests(keys: Iterable[str]) -> tuple[bytes, ...]:
    cleaned = {k.strip() for k in keys if k.strip()}
    if any(any(c.isspace() for c in k) for k in cleaned):
        raise ValueError("an API key must not contain whitespace")
    return tuple(sorted(_digest(k) for k in cleaned))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
