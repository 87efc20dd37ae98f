"""Through the whole Serve graph: batched results equal one-at-a-time results.

The recognizer is a random-weight FunASR Paraformer (real classes, gibberish text). The
same files are sent once one by one (every batch holds one request's segments) and once
all at once (segments of different requests share padded batches); every transcript must
be identical, and the concurrent run must actually have batched across requests.
"""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.speech import SENTENCES, concat_with_pauses, requires_espeak, synthesize

pytestmark = [pytest.mark.slow, requires_espeak]
MODEL = "paraformer-tiny-random"


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[bytes]:
    tmp = tmp_path_factory.mktemp("equivalence")
    out = []
    for i in range(8):
        # Different lengths and segment counts per file: padding is what could go wrong.
        parts = [synthesize(SENTENCES[(i + k) % len(SENTENCES)], tmp) for k in range(1 + i % 3)]
        out.append(_wav(concat_with_pauses(parts, pause_s=1.6)))
    return out


def request(data: bytes, model: str = MODEL) -> dict:
    return {
        "files": {"file": ("a.wav", data, "audio/wav")},
        # cache=false: the second, concurrent pass must reach the recognizer.
        "data": {"model": model, "response_format": "verbose_json", "cache": "false"},
    }


def test_batched_equals_sequential_over_http(asr_url, http, files):

    sequential = []
    for data in files:
        resp = http.post("/v1/audio/transcriptions", **request(data))
        assert resp.status_code == 200, resp.text
        sequential.append(resp.json())

    before = http.get("/v1/stats").json()[MODEL]

    async def concurrent():
        async with httpx.AsyncClient(base_url=asr_url, timeout=300) as client:
            return await asyncio.gather(
                *(client.post("/v1/audio/transcriptions", **request(d)) for d in files)
            )

    batched = [r.json() for r in asyncio.run(concurrent())]
    after = http.get("/v1/stats").json()[MODEL]

    assert sum(len(s["segments"]) for s in sequential) > len(files)  # multi-segment files
    assert any(s["text"] for s in sequential)  # gibberish, but not empty
    for one, many in zip(sequential, batched):
        assert [s["text"] for s in many["segments"]] == [s["text"] for s in one["segments"]]
        assert many["text"] == one["text"]
    new_batches = {
        int(k): v - before["batch_size_counts"].get(k, 0)
        for k, v in after["batch_size_counts"].items()
    }
    largest = max(k for k, v in new_batches.items() if v > 0)
    most_segments_in_one_file = max(len(s["segments"]) for s in sequential)
    assert largest > most_segments_in_one_file, new_batches  # segments of several requests


def test_onnx_runtime_serves_the_torch_text_in_cross_request_batches(asr_url, http, files):
    """``runtime: onnx`` behind the same deployment and batching: the same random weights
    give the torch recognizer's text (fp32; tests/recognizers/test_funasr_onnx.py bounds
    the log-probabilities), and segments of several requests share its forward passes."""
    from tests.served_apps import ONNX_MODEL

    before = http.get("/v1/stats").json()[ONNX_MODEL]

    async def both():
        async with httpx.AsyncClient(base_url=asr_url, timeout=300) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/audio/transcriptions", **request(d, model))
                    for model in (MODEL, ONNX_MODEL)
                    for d in files
                )
            )

    answers = asyncio.run(both())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    torch_out, onnx_out = answers[: len(files)], answers[len(files) :]
    assert any(a.json()["text"] for a in torch_out)
    for t, o in zip(torch_out, onnx_out):
        assert segment_texts(o) == segment_texts(t)
    after = http.get("/v1/stats").json()[ONNX_MODEL]
    new_batches = {
        int(k): v - before["batch_size_counts"].get(k, 0)
        for k, v in after["batch_size_counts"].items()
    }
    most_segments_in_one_file = max(len(a.json()["segments"]) for a in onnx_out)
    assert max(k for k, v in new_batches.items() if v > 0) > most_segments_in_one_file


def segment_texts(answer: httpx.Response) -> list[str]:
    return [s["text"] for s in answer.json()["segments"]]
