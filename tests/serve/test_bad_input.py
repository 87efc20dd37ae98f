"""Every bad input gets a JSON error with the right status, and the service keeps working."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tests.core.test_audio import wav_bytes as handmade_wav
from tests.reference import assert_wer_near_reference
from tests.served_apps import MAX_DURATION_S, MAX_UPLOAD_BYTES
from tests.speech import SENTENCES, requires_espeak, synthesize

pytestmark = [pytest.mark.slow, requires_espeak]


def _wav(samples: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="WAV", subtype=subtype)
    return buf.getvalue()


def _speech_wav(tmp_path) -> bytes:
    return _wav(synthesize(SENTENCES[0], tmp_path))


def _nan_wav() -> bytes:
    samples = np.zeros(16000, np.float32)
    samples[100] = np.nan
    return _wav(samples, "FLOAT")


CASES = {
    # name: (files/data builder, expected status, expected error code)
    "empty_body": (lambda good: {"file": ("a.wav", b"", "audio/wav")}, 400, "invalid_audio"),
    "not_audio": (
        lambda good: {"file": ("a.wav", b"this is a text file, not audio" * 20, "audio/wav")},
        400,
        "invalid_audio",
    ),
    "truncated": (
        lambda good: {"file": ("a.wav", good[: len(good) // 2], "audio/wav")},
        400,
        "invalid_audio",
    ),
    "lying_header": (
        lambda good: {
            "file": ("a.wav", handmade_wav(bytes(3200), declared_data_bytes=320000), "audio/wav")
        },
        400,
        "invalid_audio",
    ),
    "nan_samples": (
        lambda good: {"file": ("a.wav", _nan_wav(), "audio/wav")},
        400,
        "invalid_audio",
    ),
    "unsupported_codec": (
        lambda good: {
            "file": (
                "a.wav",
                handmade_wav(bytes(4096), format_tag=0x0030, channels=2, rate_hz=48000),
                "audio/wav",
            )
        },
        415,
        "unsupported_codec",
    ),
    "upload_too_large": (
        lambda good: {"file": ("a.wav", b"\0" * (MAX_UPLOAD_BYTES + 1), "audio/wav")},
        413,
        "upload_too_large",
    ),
    "audio_too_long": (
        # 16 kHz 8-bit-ish: a valid WAV just over the duration limit but under the size limit.
        lambda good: {
            "file": (
                "a.wav",
                _wav(np.zeros(int(16000 * (MAX_DURATION_S + 1)), np.float32), "PCM_U8"),
                "audio/wav",
            )
        },
        413,
        "audio_too_long",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_then_good_request(http, tmp_path, case, whisper_reference):
    good = _speech_wav(tmp_path)
    build, status, code = CASES[case]
    resp = http.post("/v1/audio/transcriptions", files=build(good))
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["message"], error
    assert resp.headers["x-request-id"]
    # The replicas are still healthy and serve the next request.
    ok = http.post("/v1/audio/transcriptions", files={"file": ("g.wav", good, "audio/wav")})
    assert ok.status_code == 200, ok.text
    library = whisper_reference.transcribe(synthesize(SENTENCES[0], tmp_path))
    assert_wer_near_reference([SENTENCES[0]], [ok.json()["text"]], [library])


def test_unknown_model_is_404(http, tmp_path):
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", _speech_wav(tmp_path), "audio/wav")},
        data={"model": "no-such-model"},
    )
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert resp.json()["error"]["param"] == "model"


def test_missing_file_field_is_400(http):
    resp = http.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "file"
    resp = http.post("/v1/audio/transcriptions", content=b"raw bytes, not multipart")
    assert resp.status_code == 400


def test_bad_response_format_is_400(http, tmp_path):
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", _speech_wav(tmp_path), "audio/wav")},
        data={"response_format": "xml"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "response_format"


def test_unknown_route_is_404(http):
    assert http.get("/v1/nothing").status_code == 404
