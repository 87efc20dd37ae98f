"""The result cache (serve_app/online/cache.py): bounds and eviction by bytes, the key's parts,
the Transcription codec, and the Redis backend against a real ``redis-server``."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import time

import pytest
from starlette.datastructures import FormData

from scripts.common.service import free_port
from serve_app.core.transcript import Transcription, TranscriptSegment
from serve_app.core.types import WordTiming
from serve_app.online import cache as cache_module
from serve_app.online.cache import (
    MemoryCache,
    RedisCache,
    TranscriptionCache,
    build_cache,
    cache_key,
    decode_transcription,
    encode_transcription,
    model_version,
    sha256_hex,
)
from serve_app.online.forms import _NOT_OUTPUT, RequestOptions, parse_form

REDIS_SERVER = shutil.which("redis-server")


def run(coro):
    return asyncio.run(coro)


def transcription(text: str = "hello world") -> Transcription:
    words = (WordTiming(0.1, 0.4, "hello"), WordTiming(0.5, 0.9, "world"))
    return Transcription(
        text=text,
        segments=(TranscriptSegment(0, 0.0, 1.0, text, words),),
        duration_s=1.5,
        model="m",
        language="en",
        timings_s={"vad": 0.01},
    )


# --- MemoryCache ----------------------------------------------------------------------


def test_memory_cache_is_bounded_by_bytes_and_evicts_least_recently_used():
    cache = MemoryCache(max_bytes=100)
    # Each entry costs len(key) + len(value) = 1 + 29 = 30 bytes: three fit, four do not.
    for key in "abc":
        run(cache.put(key, b"x" * 29))
    assert cache.size_bytes == 90 and len(cache) == 3
    assert run(cache.get("a")) is not None  # "a" is now the most recently used
    run(cache.put("d", b"y" * 29))
    assert cache.size_bytes <= 100
    assert run(cache.get("b")) is None  # the least recently used went
    assert all(run(cache.get(k)) is not None for k in "acd")


def test_memory_cache_eviction_counts_bytes_not_entries():
    cache = MemoryCache(max_bytes=1000)
    for i in range(10):
        run(cache.put(f"small{i}", b"s" * 10))  # 16-byte entries
    run(cache.put("big", b"b" * 900))  # 903 bytes: only a few small ones can stay
    assert run(cache.get("big")) == b"b" * 900
    assert cache.size_bytes <= 1000
    survivors = [i for i in range(10) if run(cache.get(f"small{i}")) is not None]
    assert survivors == list(range(10 - len(survivors), 10))  # the newest ones
    assert 0 < len(survivors) < 10


def test_memory_cache_never_stores_what_cannot_fit_and_keeps_the_rest():
    cache = MemoryCache(max_bytes=50)
    run(cache.put("a", b"x" * 20))
    run(cache.put("huge", b"x" * 100))
    assert run(cache.get("huge")) is None
    assert run(cache.get("a")) == b"x" * 20


def test_memory_cache_replacing_a_key_keeps_the_byte_count_exact():
    cache = MemoryCache(max_bytes=1000)
    run(cache.put("k", b"x" * 100))
    run(cache.put("k", b"x" * 10))
    assert cache.size_bytes == 11 and len(cache) == 1


def test_memory_cache_ttl():
    now = [0.0]
    cache = MemoryCache(max_bytes=1000, ttl_s=10, clock=lambda: now[0])
    run(cache.put("k", b"v"))
    now[0] = 9.9
    assert run(cache.get("k")) == b"v"
    now[0] = 10.1
    assert run(cache.get("k")) is None
    assert cache.size_bytes == 0


# --- the key ----------------------------------------------------------------------------


def form(**fields) -> FormData:
    items = []
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            items.append((name, v))
    return FormData(items)


def key_of(opts: RequestOptions, *, audio: bytes = b"audio", model="m", version="v1") -> str:
    cache = TranscriptionCache(MemoryCache(1000), {model: version})
    return cache.key(sha256_hex(audio), model, opts.output_fields())


def test_every_request_field_but_delivery_is_an_output_field():
    # A field added to RequestOptions is in the key unless it is declared delivery-only.
    names = {f.name for f in dataclasses.fields(RequestOptions)}
    assert set(RequestOptions().output_fields()) == names - _NOT_OUTPUT
    assert _NOT_OUTPUT == {"stream", "use_cache"}


def test_key_changes_with_the_code(tmp_path, monkeypatch):
    """A fix to the pipeline's code must not be hidden behind answers cached before it."""
    package = tmp_path / "serve_app"
    (package / "core").mkdir(parents=True)
    (package / "core" / "transcript.py").write_text("JOIN = ' '\n")
    before = cache_module.source_version(package)
    (package / "core" / "transcript.py").write_text("JOIN = ''\n")
    after = cache_module.source_version(package)
    assert before != after
    assert cache_module.code_version() == cache_module.code_version()  # stable per process
    key = cache_key("a", "m", "v", {})
    monkeypatch.setattr(cache_module, "code_version", lambda: after)
    assert cache_key("a", "m", "v", {}) != key


def test_key_changes_with_every_output_field():
    base = RequestOptions().output_fields()
    keys = {cache_key("a", "m", "v", base)}
    for name in base:
        changed = {**base, name: ["a value no default has", name]}
        keys.add(cache_key("a", "m", "v", changed))
    assert len(keys) == len(base) + 1


def test_key_changes_with_each_parsed_option_audio_model_and_version():
    variants = [
        form(),
        form(language="de"),
        form(prompt="a prompt"),
        form(hotwords="ray serve"),
        form(response_format="verbose_json"),
        form(response_format="srt"),
        form(response_format="verbose_json", **{"timestamp_granularities[]": ["word"]}),
    ]
    keys = {key_of(parse_form(v)) for v in variants}
    assert len(keys) == len(variants)
    base = parse_form(form())
    assert key_of(base, audio=b"other") != key_of(base)
    assert key_of(base, version="v2") != key_of(base)
    assert key_of(base, model="n") != key_of(base)


def test_key_ignores_delivery_options_and_model_aliases():
    plain = parse_form(form())
    assert key_of(parse_form(form(stream="true"))) == key_of(plain)
    assert key_of(parse_form(form(cache="false"))) == key_of(plain)
    assert parse_form(form(cache="false")).use_cache is False
    assert parse_form(form()).use_cache is True
    # Two aliases of one model give the same answer: the canonical name is keyed.
    assert key_of(parse_form(form(model="whisper-1"))) == key_of(
        parse_form(form(model="whisper-tiny.en"))
    )


def test_model_version_follows_the_weights_and_the_settings(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    weights = folder / "model.bin"
    weights.write_bytes(b"1234")
    first = model_version("model", tmp_path, {"beam_size": 1})
    assert model_version(str(folder), None, {"beam_size": 1}) != ""  # absolute path form
    assert model_version("model", tmp_path, {"beam_size": 1}) == first  # stable
    assert model_version("model", tmp_path, {"beam_size": 2}) != first
    weights.write_bytes(b"12345")
    assert model_version("model", tmp_path, {"beam_size": 1}) != first
    assert model_version("hub/id", None, {}) != model_version("hub/other", None, {})


# --- the value --------------------------------------------------------------------------


def test_transcription_round_trips_through_json():
    tr = transcription()
    back = decode_transcription(encode_transcription(tr))
    assert back == tr
    assert isinstance(back.segments[0].words[0], WordTiming)


def test_transcription_cache_hit_miss_and_corrupt_entry():
    backend = MemoryCache(10_000)
    cache = TranscriptionCache(backend, {"m": "v"})
    key = cache.key("abc", "m", RequestOptions().output_fields())
    assert run(cache.get(key, model="m")) is None
    run(cache.put(key, transcription()))
    assert run(cache.get(key, model="m")) == transcription()
    run(backend.put(key, b'{"text": 1, "unknown_field": 2}'))
    assert run(cache.get(key, model="m")) is None  # another version's entry: a miss


# --- Redis --------------------------------------------------------------------------------


@pytest.fixture
def redis_url(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (scripts/setup.sh --test installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server not answering"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_backend_stores_shares_and_expires(redis_url):
    url, _ = redis_url

    async def scenario():
        writer = TranscriptionCache(RedisCache(url), {"m": "v"})
        reader = TranscriptionCache(RedisCache(url), {"m": "v"})  # another ingress replica
        short = RedisCache(url, ttl_s=0.3)
        key = writer.key(sha256_hex(b"audio"), "m", RequestOptions().output_fields())
        assert await reader.get(key, model="m") is None
        await writer.put(key, transcription())
        shared = await reader.get(key, model="m")
        await short.put("ephemeral", b"v")
        assert await short.get("ephemeral") == b"v"
        await asyncio.sleep(0.6)
        expired = await short.get("ephemeral")
        for backend in (writer.backend, reader.backend, short):
            assert isinstance(backend, RedisCache)
            await backend.close()
        return shared, expired

    shared, expired = run(scenario())
    assert shared == transcription()
    assert expired is None


def test_redis_errors_are_misses_never_exceptions(redis_url):
    url, proc = redis_url

    async def scenario():
        cache = RedisCache(url, socket_timeout_s=0.5)
        await cache.put("k", b"v")
        assert await cache.get("k") == b"v"
        proc.terminate()
        proc.wait(timeout=10)
        down_get = await cache.get("k")
        await cache.put("k2", b"v")  # must not raise
        unreachable = RedisCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
        never = await unreachable.get("k")
        await cache.close()
        await unreachable.close()
        return down_get, never

    assert run(scenario()) == (None, None)


def test_the_ingress_cache_is_the_config_section_with_every_version(tmp_path):
    """The ingress gets ``CacheSettings`` as the config holds it, every served model's
    version filled in by the builder (a pinned one kept); disabled means no cache."""
    from serve_app.config import AppConfig, CacheSettings
    from serve_app.online.app import _cache_settings

    config = AppConfig.model_validate(
        {
            "recognizers": [
                {"name": "a", "backend": "funasr", "model": "x"},
                {"name": "b", "backend": "funasr", "model": "y"},
            ],
            "cache": {"max_bytes": 4096, "model_versions": {"a": "pinned"}},
        }
    )
    settings = _cache_settings(config, str(tmp_path))
    assert settings.model_versions["a"] == "pinned"
    assert len(settings.model_versions["b"]) == 16  # computed: model_version's hash
    assert (settings.max_bytes, settings.redis_url) == (4096, None)
    cache = build_cache(settings)
    assert cache is not None and isinstance(cache.backend, MemoryCache)
    off = config.model_copy(update={"cache": CacheSettings(enabled=False)})
    assert build_cache(_cache_settings(off, str(tmp_path))) is None
