"""Issue 10 over HTTP, on the session's capabilities app (tests/served_apps.py, shared
with the browser's translation test): a random-weight Paraformer with a random-weight
CT-Transformer punctuation stage, and the real multilingual Whisper base.

- Punctuation: many concurrent requests give exactly the text the plain
  :class:`~serve_app.punctuation.base.BatchedPunctuator` gives one request at a time over
  the same segments (taken from the same server with ``punctuate=false``), and the
  offline job's recognize stage gives the same punctuated file as the online route.
  Random weights: the marks are meaningless, only equality is the point (fp32; the
  recognizer and the punctuator are both bit-exact batched vs alone on CPU, see
  tests/punctuation and tests/serve/test_batching_equivalence.py).
- Translations (``/v1/audio/translations``, five formats), the 400s naming the option
  for a model that cannot, language detection once per request against faster-whisper's
  own detection, and ``GET /v1/models`` capabilities.
"""

# ruff: noqa: RUF001  (full-width CJK punctuation is the point here)

from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from scripts import fidelity
from serve_app.config import AppConfig
from tests import served_apps as apps
from tests.recognizers.test_whisper_multilingual import CORPUS
from tests.speech import SENTENCES, concat_with_pauses, have_espeak, synthesize

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed")

PARAFORMER = apps.CAPS_PARAFORMER
WHISPER_BASE = apps.CAPS_WHISPER_BASE
PUNCTUATION = apps.CAPS_PUNCTUATION
NUM_FILES = 8
ENGLISH = {"the", "to", "is", "we", "a", "in", "every", "please", "my", "train", "today", "at"}


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def english_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Three sentences per file with pauses the VAD splits at: several segments each."""
    tmp = tmp_path_factory.mktemp("punc-speech")
    spoken = [synthesize(s, tmp) for s in SENTENCES[:6]]
    return [
        _wav(concat_with_pauses([spoken[(i + k) % 6] for k in range(3)], 1.0))
        for i in range(NUM_FILES)
    ]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[np.ndarray]]:
    tmp = tmp_path_factory.mktemp("foreign")
    return {
        language: [
            synthesize(text, tmp, voice=CORPUS[language][0]) for text in CORPUS[language][1][:2]
        ]
        for language in ("fr", "es")
    }


def _post(client, data: bytes, route: str = "/v1/audio/transcriptions", **fields):
    files = {"file": ("a.wav", data, "audio/wav")}
    return client.post(route, files=files, data=fields)


def _verbose(client, data: bytes, **fields) -> dict:
    response = _post(client, data, response_format="verbose_json", **fields)
    assert response.status_code == 200, response.text
    return response.json()


# -- punctuation ------------------------------------------------------------------------


def test_punctuated_concurrent_requests_equal_the_plain_stage_one_at_a_time(
    caps_http, english_files, ct_punc_tiny_dir, models_dir
) -> None:
    from ray import serve

    from serve_app.config import PunctuationSettings
    from serve_app.punctuation.stage import build_punctuator

    raw = [_verbose(caps_http, data, model=PARAFORMER, punctuate="false") for data in english_files]
    with ThreadPoolExecutor(len(english_files)) as pool:
        served = list(pool.map(lambda d: _verbose(caps_http, d, model=PARAFORMER), english_files))
    plain = build_punctuator(
        PunctuationSettings(model=str(ct_punc_tiny_dir), **PUNCTUATION), models_dir
    )
    windows_per_file = []
    for before, after in zip(raw, served, strict=True):
        texts = [seg["text"] for seg in before["segments"]]
        assert len(texts) >= 2, before  # several segments: windows cross their boundaries
        (alone,) = plain.punctuate([texts])
        assert not isinstance(alone, Exception), alone
        assert [seg["text"] for seg in after["segments"]] == alone
        assert [(s["start"], s["end"]) for s in after["segments"]] == [
            (s["start"], s["end"]) for s in before["segments"]
        ]
        windows_per_file.append(len(plain.request_windows(texts).windows))
        # Same words, marks added: stripping the marks gives the raw text back.
        assert re.sub(r"[，。？、,.?]", "", after["text"]).lower().replace(" ", "") == before[
            "text"
        ].lower().replace(" ", "")
    assert max(windows_per_file) > 1
    marks = {ch for r in served for ch in r["text"] if ch in "，。？、,.?"}
    assert len(marks) > 1, marks  # the stage really punctuates (meaningless but varied)
    stats = (
        serve.get_deployment_handle(f"Punctuation-{PARAFORMER}", app_name=apps.CAPS_APP_NAME)
        .batch_stats.remote()
        .result()
    )
    print("punctuation batch sizes (windows per forward):", stats["batch_size_counts"])
    assert max(stats["batch_size_counts"]) > 1


def test_offline_job_stage_punctuates_like_the_online_route(
    caps_http, english_files, caps_app_config, models_dir, tmp_path: Path
) -> None:
    from serve_app.batch.stages import (
        DECODED_SCHEMA,
        DecodeVadStage,
        RecognizeStage,
        table_from_rows,
    )

    config = AppConfig.model_validate(caps_app_config)
    data = english_files[0]
    path = tmp_path / "file.wav"
    path.write_bytes(data)
    decode = DecodeVadStage(config.audio, config.vad, str(models_dir))
    decoded = table_from_rows([decode.process({"id": "f", "audio": str(path)})], DECODED_SCHEMA)
    (row,) = RecognizeStage(config.recognizer(PARAFORMER), str(models_dir))(decoded).to_pylist()
    online = _verbose(caps_http, data, model=PARAFORMER)
    assert row["status"] == "ok", row
    assert row["text"] == online["text"]
    assert [(round(s["start_s"], 3), round(s["end_s"], 3), s["text"]) for s in row["segments"]] == [
        (s["start"], s["end"], s["text"]) for s in online["segments"]
    ]


# -- capabilities, options a model cannot honour ------------------------------------------


def test_models_list_capabilities(caps_http) -> None:
    body = caps_http.get("/v1/models").json()
    caps = {m["id"]: m["capabilities"] for m in body["data"]}
    para, base = caps[PARAFORMER], caps[WHISPER_BASE]
    assert para["punctuation"] and para["punctuation_source"] == "ct-transformer"
    assert not para["translation"] and not para["language_detection"]
    assert para["word_timestamps"]  # the CIF predictor's character times
    assert base["punctuation"] and base["punctuation_source"] == "model"
    assert base["translation"] and base["language_detection"] and base["word_timestamps"]
    assert base["hotwords"] == "prompt" and {"de", "fr", "es", "zh", "en"} <= set(base["languages"])
    assert not para["diarization"] and not base["diarization"]


def test_translation_on_a_model_that_cannot_is_a_400_naming_it(caps_http, english_files) -> None:
    response = _post(caps_http, english_files[0], "/v1/audio/translations", model=PARAFORMER)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert PARAFORMER in error["message"] and error["param"] == "model"


def test_unsupported_option_is_a_400_naming_it(caps_http, english_files) -> None:
    response = _post(caps_http, english_files[0], model=PARAFORMER, prompt="hello")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"


# -- languages ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_languages(whisper_base_dir, foreign) -> dict[str, list[str]]:
    """faster-whisper's own language detection on each whole file (same model, int8)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_base_dir), device="cpu", compute_type="int8")
    return {
        language: [model.detect_language(audio)[0] for audio in files]
        for language, files in foreign.items()
    }


def test_language_detected_per_request_as_faster_whisper_does(
    caps_http, foreign, reference_languages
) -> None:
    agree = total = correct = 0
    for language, files in foreign.items():
        for audio, expected in zip(files, reference_languages[language], strict=True):
            body = _verbose(caps_http, _wav(audio), model=WHISPER_BASE)
            total += 1
            agree += body["language"] == expected
            correct += body["language"] == language
            assert body["text"].strip(), body
    print(f"language detection: {correct}/{total} right, {agree}/{total} as faster-whisper")
    assert agree == total


def test_given_language_skips_detection(caps_http, foreign) -> None:
    body = _verbose(caps_http, _wav(foreign["fr"][0]), model=WHISPER_BASE, language="es")
    assert body["language"] == "es"


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "verbose_json", "vtt"])
def test_translation_gives_english_text_in_every_format(
    caps_http, foreign, response_format: str
) -> None:
    # One sentence: Whisper base's translation of longer espeak-ng French drifts into a
    # repeated English phrase (faster-whisper's own transcribe(task="translate") gives the
    # same phrase on that audio), which says nothing about the route.
    audio = foreign["fr"][0]
    response = _post(
        caps_http,
        _wav(audio),
        "/v1/audio/translations",
        model=WHISPER_BASE,
        response_format=response_format,
    )
    assert response.status_code == 200, response.text
    body = response.text
    if response_format in ("json", "verbose_json"):
        parsed = json.loads(body)
        text = parsed["text"]
        if response_format == "verbose_json":
            assert parsed["task"] == "translate" and parsed["segments"]
    else:
        text = body
        if response_format == "srt":
            assert "-->" in body and body.startswith("1\n")
        if response_format == "vtt":
            assert body.startswith("WEBVTT")
    words = set(re.findall(r"[a-z']+", text.lower()))
    assert words & ENGLISH, text
    assert all(ord(ch) < 0x250 for ch in text), text  # Latin script only


# Languages of the issue with recorded samples in the pytest-audioeval wheel (German has
# none there; its espeak-ng files are in the faster-whisper agreement test above).
RECORDED_LANGUAGES = ("fr", "es", "zh")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The wheel's human-sounding samples (3 per language), read from the zip; fetched from
    PyPI once into the user cache (skipped where PyPI cannot be reached)."""
    cache = Path.home() / ".cache" / "ray-funasr-serve" / "test-data"
    try:
        return {lang: fidelity.audioeval_utterances(cache, lang) for lang in RECORDED_LANGUAGES}
    except Exception as exc:
        pytest.skip(f"pytest-audioeval samples unavailable: {exc}")


def test_language_detected_right_on_recorded_speech(caps_http, recorded, whisper_base_dir):
    """>= 90 % right on recorded (not espeak-ng) French, Spanish and Mandarin, each request
    detected once by the service, and the same language faster-whisper's own
    ``detect_language`` gives on every file (espeak-ng speech: 9/20 right, for
    faster-whisper too; see tests/recognizers/test_whisper_multilingual.py)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_base_dir), device="cpu", compute_type="int8")
    right = total = agree = 0
    for language, utterances in recorded.items():
        for utt in utterances:
            body = _verbose(caps_http, _wav(utt.samples), model=WHISPER_BASE)
            total += 1
            right += body["language"] == language
            agree += body["language"] == model.detect_language(utt.samples)[0]
    print(f"recorded speech: language right {right}/{total}, as faster-whisper {agree}/{total}")
    # Agreement with the reference library on this machine is exact; the accuracy bound
    # (the 90 %) allows one file of nine to flip on another CPU's int8 kernels.
    assert agree == total and right >= total - 1


def test_live_2pass_partials_come_from_the_streaming_deployment(caps_url, english_files):
    """Through Serve: FunASR's protocol in 2pass mode on the Paraformer with a ``streaming``
    section. "2pass-online" text is the streaming deployment's (the utterance's state kept
    there, found by each call: no state missed), "2pass-offline" the recognizer's final;
    the states are freed when the utterances end."""
    import asyncio
    import time

    from ray import serve

    from tests.serve.live_helpers import funasr_client

    samples = sf.read(io.BytesIO(english_files[0]), dtype="float32")[0]
    handle = serve.get_deployment_handle(f"Streaming-{PARAFORMER}", app_name=apps.CAPS_APP_NAME)
    before = handle.batch_stats.remote().result()["items"]

    url = caps_url.replace("http", "ws") + "/funasr"
    # Twice real time, 100 ms frames: partials have time to come.
    messages = asyncio.run(funasr_client(url, samples, chunk_ms=100, pace_s=0.05, timeout_s=60))
    online = [m["text"] for m in messages if m.get("mode") == "2pass-online"]
    offline = [m["text"] for m in messages if m.get("mode") == "2pass-offline" and m["text"]]
    assert online and offline, messages
    stats = handle.batch_stats.remote().result()
    assert stats["items"] - before >= len(online)  # every online text from a streaming call
    assert stats["state_misses"] == 0 and stats["sessions"] >= 1, stats
    deadline = time.monotonic() + 10  # the ends are fire-and-forget calls
    while stats["states"] and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = handle.batch_stats.remote().result()
    assert stats["states"] == 0, stats
