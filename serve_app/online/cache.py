"""The result cache: a finished :class:`Transcription` keyed by everything that made it.

Key: sha256 over the uploaded bytes' sha256, the canonical model name, the model's
version (:func:`model_version`: its weights' identity and the settings that change its
output), the code's (:func:`code_version`: package version and source hash) and the
request's :meth:`RequestOptions.output_fields` (every option that changes
the answer, so an option added there is part of the key without an edit here).

Value: the ``Transcription`` as JSON, not a rendered body. ``response_format`` is part of
the key anyway (it is an output field), but a streamed and a plain request for the same
output share one entry (``stream`` is not an output field), and a stream replays a hit
from its segments; rendering at answer time costs microseconds. JSON, not pickle: a
shared Redis must not be a way to run code in the ingress.

Backends: :class:`MemoryCache` (in-process LRU bounded by bytes, per ingress replica) and
:class:`RedisCache` (shared by every replica; its size is Redis's own ``maxmemory``).
A backend error is never a request error: it is logged, counted and read as a miss.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import logging
import time
import types
import typing
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from serve_app.config import CacheSettings
from serve_app.core import observability
from serve_app.core.transcript import Transcription

logger = logging.getLogger(__name__)

# Files whose identity stands for a model folder's weights (the rest is small config).
_MAX_IDENTITY_FILES = 256


class CacheBackend(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...


class MemoryCache:
    """In-process LRU bounded by the bytes of its keys and values; optional TTL.

    Not thread-safe: the ingress uses it from its event loop only.
    """

    name = "memory"

    def __init__(self, max_bytes: int, *, ttl_s: float | None = None, clock=time.monotonic):
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes) -> None:
        cost = _cost(key, value)
        if key in self._entries:
            self._drop(key)
        if cost > self._max_bytes:
            return  # never evict everything for one entry that cannot fit anyway
        expires = self._clock() + self._ttl_s if self._ttl_s else float("inf")
        self._entries[key] = (value, expires)
        self._bytes += cost
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= _cost(key, value)


def _cost(key: str, value: bytes) -> int:
    return len(key) + len(value)


class RedisCache:
    """Redis (``redis.asyncio``): entries under ``prefix`` with ``ttl_s`` expiry.

    Bounded by the server's ``maxmemory`` and eviction policy (``allkeys-lru`` suits a
    cache), not here. Every error -- connection refused, timeout, a server error -- is
    logged, counted (``asr_cache_errors_total``) and answered as a miss or a lost write.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float | None = None,
        prefix: str = "asr:result:",
        socket_timeout_s: float = 1.0,
    ) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        self._ttl_s = ttl_s
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._prefix + key)
        except Exception as exc:  # redis.RedisError, OSError: never a request error
            _backend_error(self.name, "get", exc)
            return None
        return bytes(value) if value is not None else None

    async def put(self, key: str, value: bytes) -> None:
        ttl_ms = round(self._ttl_s * 1000) if self._ttl_s else None
        try:
            await self._client.set(self._prefix + key, value, px=ttl_ms)
        except Exception as exc:
            _backend_error(self.name, "put", exc)

    async def close(self) -> None:
        await self._client.aclose()


def _backend_error(backend: str, op: str, exc: BaseException) -> None:
    logger.warning("result cache %s %s failed: %r", backend, op, exc)
    observability.cache_errors_total().inc(tags={"backend": backend, "op": op})


class TranscriptionCache:
    """Keys, (de)serializes and counts; the backend only stores bytes."""

    def __init__(self, backend: CacheBackend, model_versions: Mapping[str, str]) -> None:
        self._backend = backend
        self._versions = dict(model_versions)

    @property
    def backend(self) -> CacheBackend:
        return self._backend

    def key(self, audio_sha256: str, model: str, output_fields: Mapping[str, Any]) -> str:
        """``model`` is the canonical name; it replaces the alias the client sent (an
        alias changes nothing in the output, and two aliases should share entries)."""
        return cache_key(
            audio_sha256, model, self._versions.get(model, ""), {**output_fields, "model": model}
        )

    async def get(self, key: str, *, model: str) -> Transcription | None:
        raw = await self._backend.get(key)
        found: Transcription | None = None
        if raw is not None:
            try:
                found = decode_transcription(raw)
            except (ValueError, TypeError, KeyError) as exc:
                # Written by another version of this code: a miss, overwritten below.
                _backend_error(self._backend.name, "decode", exc)
        counter = observability.cache_hits_total if found else observability.cache_misses_total
        counter().inc(tags={"model": model})
        return found

    async def put(self, key: str, transcription: Transcription) -> None:
        await self._backend.put(key, encode_transcription(transcription))


def build_cache(settings: CacheSettings) -> TranscriptionCache | None:
    """The ingress's cache from the config's ``cache`` section (None when disabled).

    ``settings.model_versions`` must name every served model: the app builder fills in
    the computed version of each model the config file does not pin
    (serve_app.online.app); a model missing there is keyed with an empty version.
    """
    if not settings.enabled:
        return None
    backend = build_backend(
        max_bytes=settings.max_bytes, redis_url=settings.redis_url, ttl_s=settings.ttl_s
    )
    return TranscriptionCache(backend, settings.model_versions)


def build_backend(*, max_bytes: int, redis_url: str | None, ttl_s: float | None) -> CacheBackend:
    if redis_url:
        return RedisCache(redis_url, ttl_s=ttl_s)
    return MemoryCache(max_bytes, ttl_s=ttl_s)


def cache_key(
    audio_sha256: str, model: str, model_version: str, output_fields: Mapping[str, Any]
) -> str:
    payload = {
        "audio_sha256": audio_sha256,
        "model": model,
        "model_version": model_version,
        "options": output_fields,
        # A new field in Transcription (or its parts) changes what an entry holds.
        "schema": _SCHEMA,
        # A fix to stitching, re-decoding or rendering changes answers: entries cached by
        # other code (Redis with ttl_s: null outlives any deploy) are never served.
        "code": code_version(),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _json_default(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


@functools.cache
def code_version() -> str:
    """What code made an answer: :func:`source_version` of this package, once per process."""
    return source_version(Path(__file__).resolve().parents[1])


def source_version(root: Path) -> str:
    """The package's version and a hash of every Python module under ``root`` (~20k lines:
    milliseconds)."""
    try:
        package = importlib.metadata.version("ray-funasr-serve")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    digest = hashlib.sha256(package.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{package}+{digest.hexdigest()[:12]}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_version(model: str, models_dir: str | Path | None, settings: Mapping[str, Any]) -> str:
    """A short hash of the model folder's identity (each file's relative path, size and
    mtime) and of ``settings`` (the recognizer and VAD settings that change the output).

    A folder that is not on this machine (a hub id) is identified by its name: then a
    new upload under the same name needs a config change (or a cache flush) to be seen.
    """
    path = Path(model)
    if not path.is_dir() and models_dir is not None:
        path = Path(models_dir) / model
    files: list[tuple[str, int, int]] = []
    if path.is_dir():
        for item in sorted(path.rglob("*"))[:_MAX_IDENTITY_FILES]:
            if item.is_file():
                stat = item.stat()
                files.append((str(item.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    text = json.dumps(
        {"path": str(path), "files": files, "settings": settings},
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- Transcription <-> JSON, driven by the dataclasses' own type hints -----------------


def encode_transcription(transcription: Transcription) -> bytes:
    return json.dumps(dataclasses.asdict(transcription), ensure_ascii=False).encode()


def decode_transcription(raw: bytes) -> Transcription:
    result = _from_json(Transcription, json.loads(raw))
    if not isinstance(result, Transcription):
        raise TypeError("not a Transcription")
    return result


def _from_json(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__}: expected an object")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        if set(value) - names:
            raise KeyError(f"{tp.__name__}: unknown fields {sorted(set(value) - names)}")
        return tp(**{k: _from_json(hints[k], v) for k, v in value.items()})
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v) for v in value)
        return tuple(_from_json(a, v) for a, v in zip(args, value, strict=True))
    if origin in (list,):
        return [_from_json(typing.get_args(tp)[0], v) for v in value]
    if origin in (dict,):
        _, value_type = typing.get_args(tp)
        return {k: _from_json(value_type, v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_json(members[0], value) if len(members) == 1 else value
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _schema(tp: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        return {f.name: _schema(hints[f.name]) for f in dataclasses.fields(tp)}
    args = typing.get_args(tp)
    if args:
        return [repr(typing.get_origin(tp)), [_schema(a) for a in args]]
    return repr(tp)


_SCHEMA = hashlib.sha256(json.dumps(_schema(Transcription)).encode()).hexdigest()[:12]
