"""Fuzz: 1,200 mutated audio files never get a 500, a hang or a dead replica.

The mutations (``scripts/fuzz.py``, also the long-run tool) are made from good WAV, FLAC,
Ogg and MP3 files of an espeak-ng sentence: truncations, bit flips, corrupted header
fields, wrong sample rates, huge channel counts, valid headers followed by garbage, empty
bodies, random bytes. All of them go through ``decode_audio`` in-process (the code the
ingress runs on every upload), each within a time bound; a sample goes over HTTP to the
test app: the rejected ones must come back as 4xx JSON errors, the accepted short ones as
200s, and afterwards the same replicas answer a good file exactly as before.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts import fuzz
from serve_app.config import AudioSettings
from tests.served_apps import APP_NAME, MAX_DURATION_S, MAX_UPLOAD_BYTES
from tests.speech import SENTENCES, requires_espeak, synthesize

pytestmark = requires_espeak


NUM_CASES = 1200
# Per decode. The slowest case measured 0.4 s on a busy 2-core VM; a hang is unbounded.
DECODE_TIMEOUT_S = 30.0
HTTP_REJECTED = 100
# Each accepted case is a transcription; the script (`--http-sample`) sends more.
HTTP_MAX_ACCEPTED = 16
HTTP_TIMEOUT_S = 120.0
# The same limits as the app the HTTP part talks to, so both see the same outcomes.
LIMITS = AudioSettings(max_upload_bytes=MAX_UPLOAD_BYTES, max_duration_s=MAX_DURATION_S)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    return fuzz.seed_files(synthesize(SENTENCES[0], tmp_path_factory.mktemp("fuzz")))


@pytest.fixture(scope="module")
def outcomes(seeds) -> list:
    cases = fuzz.generate(seeds, NUM_CASES, seed=0)
    return [fuzz.decode_case(case, LIMITS, DECODE_TIMEOUT_S) for case in cases]


def test_generator_covers_what_it_claims(seeds) -> None:
    cases = fuzz.generate(seeds, NUM_CASES, seed=0)
    assert len(cases) >= 1000
    assert len({c.name for c in cases}) == len(cases)
    names = " ".join(c.name for c in cases)
    for needle in (
        "none/empty",
        "none/random-",
        "riff-magic-garbage",
        "wav16k/rate-0",
        "wav16k/rate-huge",
        "wav16k/channels-0",
        "wav16k/channels-65535",
        "wav16k/bits-7",
        "wav16k/riff-size-huge",
        "wav16k/data-size-huge",
        "layout-65535ch-8bit",
        "flac48k-stereo/streaminfo-rate-0",
        "ogg-opus48k/id-channels-255",
        "mp3-44k/frame0-rate",
        "/bit-flips",
        "/cut-random",
        "/header-then-garbage",
    ):
        assert needle in names, needle
    # Deterministic: the same seed makes the same files.
    again = fuzz.generate(seeds, NUM_CASES, seed=0)
    assert [c.data for c in again] == [c.data for c in cases]


def test_decode_errors_are_all_4xx_at_the_ingress() -> None:
    from serve_app.online.http_errors import STATUS_BY_ERROR

    for cls in fuzz.DECODE_ERRORS:
        status = next(s for c, s in STATUS_BY_ERROR.items() if issubclass(cls, c))
        assert 400 <= status < 500, cls


def test_every_mutation_decodes_or_gets_a_typed_4xx_error(outcomes) -> None:
    failed = [o for o in outcomes if o.failed]
    summary = fuzz.summarize(outcomes)
    print(summary)
    assert not failed, summary
    kinds = Counter(o.kind for o in outcomes)
    # Both sides are exercised: the fuzzer is not just making unopenable junk.
    assert kinds["ok"] >= 50 and kinds["InvalidAudioError"] >= 500, kinds
    assert max(o.seconds for o in outcomes) < DECODE_TIMEOUT_S


def test_the_checker_catches_a_crash_and_a_hang(monkeypatch) -> None:
    import time

    case = fuzz.Case("x/y#0", b"RIFF")

    def boom(data, limits):
        raise KeyError("bug")

    monkeypatch.setattr(fuzz, "decode_audio", boom)
    assert fuzz.decode_case(case, LIMITS, 5.0).kind == "crash:KeyError"
    monkeypatch.setattr(fuzz, "decode_audio", lambda data, limits: time.sleep(2))
    assert fuzz.decode_case(case, LIMITS, 0.2).kind == "timeout"


def _replicas() -> set[str]:
    """Names of the test app's live replica actors (a replaced replica gets a new name)."""
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    return {a["name"] for a in names if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#")}


def _transcribe(http, data: bytes) -> str:
    r = http.post("/v1/audio/transcriptions", files={"file": ("good.wav", data, "audio/wav")})
    assert r.status_code == 200, r.text
    return r.json()["text"]


@pytest.mark.slow
def test_http_sample_gets_200_or_4xx_json_and_replicas_survive(http, seeds, outcomes) -> None:
    good = seeds["wav16k"]
    before_text = _transcribe(http, good)
    before_replicas = _replicas()
    assert len(before_replicas) >= 3  # ingress, VAD, recognizers

    sample = fuzz.http_sample(outcomes, HTTP_REJECTED, HTTP_MAX_ACCEPTED, seed=0)
    expected_ok = {o.case.name for o in outcomes if o.kind == "ok"}
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(
            pool.map(lambda c: fuzz.http_check(http, c, timeout_s=HTTP_TIMEOUT_S), sample)
        )
    problems = [f"{c.name}: {p}" for c, (_, p) in zip(sample, results) if p]
    assert not problems, problems
    # The service decides like decode_audio in-process (same code, same limits).
    wrong = [
        f"{c.name}: {status}"
        for c, (status, _) in zip(sample, results)
        if (status == 200) != (c.name in expected_ok)
    ]
    assert not wrong, wrong
    statuses = Counter(status for status, _ in results)
    assert statuses[200] >= 1 and sum(n for s, n in statuses.items() if s != 200) >= 50

    assert _replicas() == before_replicas  # no replica died and was replaced
    assert _transcribe(http, good) == before_text


def test_an_overloaded_answer_is_sent_again_after_its_retry_after() -> None:
    """A 503 with Retry-After (admission on a starved machine) is "come back later": the
    case goes again; a 503 that never clears is still reported."""
    import httpx

    def client(answers: list[httpx.Response]):
        class Client:
            calls = 0

            def post(self, *args, **kwargs) -> httpx.Response:
                Client.calls += 1
                return answers.pop(0) if len(answers) > 1 else answers[0]

        return Client()

    error = {"error": {"code": "invalid_audio", "message": "bad"}}
    busy = httpx.Response(503, headers={"retry-after": "0"}, json={"error": {"code": "x"}})
    once = client([busy, httpx.Response(400, json=error)])
    assert fuzz.http_check(once, fuzz.Case("x/y#0", b"RIFF")) == (400, "")
    assert once.calls == 2
    always = client([busy])
    status, problem = fuzz.http_check(always, fuzz.Case("x/y#0", b"RIFF"), retries=2)
    assert status == 503 and problem and always.calls == 3
