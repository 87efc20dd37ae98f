"""``timestamp_granularities[]=word`` over HTTP (the shared app): verbose_json gets
OpenAI's top-level ``words``; Whisper tiny.en's word starts lie within 0.3 s of the true
onsets of espeak-ng words (spoken one by one, so every onset is known to a sample: see
tests/recognizers/test_whisper_words.py), through VAD, packing and stitching. Also the
400 for a translation on the English-only model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tests.recognizers.test_whisper_words import (
    ONSET_TOLERANCE_S,
    SENTENCES,
    _word_by_word,
    onset_errors_s,
)
from tests.speech import have_espeak, silence

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng and sox are needed")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[tuple[str, float]]]:
    """The sentences word by word, 1 s apart (the VAD cuts there), with true onsets."""
    tmp = tmp_path_factory.mktemp("words-http")
    parts, truth, offset_s = [], [], 0.0
    for sentence in SENTENCES:
        audio, onsets = _word_by_word(sentence, tmp)
        parts += [audio, silence(1.0)]
        truth += [(word, offset_s + t) for word, t in onsets]
        offset_s += len(audio) / 16_000 + 1.0
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(parts), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue(), truth


def _post(http, data: bytes, **fields):
    response = http.post(
        "/v1/audio/transcriptions", files={"file": ("w.wav", data, "audio/wav")}, data=fields
    )
    assert response.status_code == 200, response.text
    return response


def test_whisper_word_starts_near_true_onsets(http, spoken) -> None:
    data, truth = spoken
    body = _post(
        http,
        data,
        model="whisper-tiny.en",
        response_format="verbose_json",
        **{"timestamp_granularities[]": "word"},
    ).json()
    words = [(w["word"], w["start"]) for w in body["words"]]
    assert all(w["start"] <= w["end"] for w in body["words"])
    errors = onset_errors_s(words, truth)
    print(
        f"whisper-tiny.en over HTTP: {len(errors)}/{len(truth)} words matched, mean "
        f"|start - onset| {np.mean(errors):.3f} s, max {max(errors):.3f} s"
    )
    assert len(errors) >= 0.8 * len(truth)
    assert max(errors) <= ONSET_TOLERANCE_S
    # Without the granularity: no words; srt is the same either way.
    plain = _post(http, data, model="whisper-tiny.en", response_format="verbose_json").json()
    assert "words" not in plain
    srt_words = _post(
        http,
        data,
        model="whisper-tiny.en",
        response_format="srt",
        **{"timestamp_granularities[]": "word"},
    ).text
    assert srt_words == _post(http, data, model="whisper-tiny.en", response_format="srt").text


def test_paraformer_words_come_from_its_predictor(http, spoken) -> None:
    """Random weights: the times are meaningless, but they are there, in order, inside
    their segments (the CIF predictor gives one per token)."""
    data, _ = spoken
    body = _post(
        http,
        data,
        model="paraformer-tiny-random",
        response_format="verbose_json",
        **{"timestamp_granularities[]": "word"},
    ).json()
    assert body["words"], body
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts)
    first, last = body["segments"][0]["start"], body["segments"][-1]["end"]
    assert first - 0.05 <= starts[0] and starts[-1] <= last + 0.05


def test_translation_on_an_english_only_model_is_a_400_naming_it(http, spoken) -> None:
    data, _ = spoken
    response = http.post(
        "/v1/audio/translations",
        files={"file": ("w.wav", data, "audio/wav")},
        data={"model": "whisper-tiny.en"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "whisper-tiny.en" in error["message"] and error["param"] == "model"
