"""A chunked upload (no Content-Length) past the limit is refused while it is read (no Ray).

The multipart form used to be parsed whole before the file's size was checked: a 120 MB
chunked upload was answered 413 only after all of it had been spooled (the ingress's RSS
grew by 155 MB in a probe). The body is now counted as it arrives.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.datastructures import UploadFile
from starlette.testclient import TestClient

from serve_app.config import AudioSettings
from tests.serve.fake_ingress import asgi_post, fake_ingress, wav, working_ingress

CHUNK_BYTES = 64 * 1024
LIMIT_BYTES = 1024 * 1024
BOUNDARY = "testboundary"


def _multipart_head() -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()


async def _post_chunked(app, total_bytes: int) -> tuple[int, dict, int]:
    """POST a multipart body of about ``total_bytes`` in chunks, without Content-Length;
    (status, JSON body, bytes the app pulled)."""
    chunks = [_multipart_head()]
    chunks += [b"\0" * CHUNK_BYTES] * (total_bytes // CHUNK_BYTES)
    chunks.append(f"\r\n--{BOUNDARY}--\r\n".encode())
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        if not chunks:
            await asyncio.sleep(3600)  # the client would wait; the app must not ask
        body = chunks.pop(0)
        pulled += len(body)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    headers = {
        "content-type": f"multipart/form-data; boundary={BOUNDARY}",
        "transfer-encoding": "chunked",
    }
    status, _, body = await asyncio.wait_for(
        asgi_post(app, "/v1/audio/transcriptions", headers, receive), 30
    )
    return status, json.loads(body), pulled


def test_chunked_upload_past_the_limit_stops_being_read_at_the_limit():
    server = fake_ingress(limits=AudioSettings(max_upload_bytes=LIMIT_BYTES))
    status, body, pulled = asyncio.run(_post_chunked(server.http_app(), 20 * LIMIT_BYTES))
    assert status == 413, body
    assert body["error"]["code"] == "upload_too_large"
    # Read up to the limit (+ the multipart allowance and one chunk), not the 20 MB sent.
    assert pulled <= LIMIT_BYTES + 64 * 1024 + 2 * CHUNK_BYTES, pulled


def test_an_upload_under_the_limit_still_goes_through():
    server = working_ingress(limits=AudioSettings(max_upload_bytes=LIMIT_BYTES))
    audio = wav(1.0)
    assert len(audio) < LIMIT_BYTES
    response = TestClient(server.http_app()).post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")}
    )
    assert response.status_code == 200 and response.json()["text"] == "hello"


@pytest.mark.parametrize(
    ("fields", "status"), [({"model": "no-such-model"}, 404), ({"response_format": "bogus"}, 400)]
)
def test_the_spooled_upload_is_closed_when_a_check_after_the_form_refuses(
    monkeypatch, fields, status
):
    closed: list[str] = []
    original = UploadFile.close

    async def close(self: UploadFile) -> None:
        closed.append(self.filename or "")
        await original(self)

    monkeypatch.setattr(UploadFile, "close", close)
    client = TestClient(working_ingress().http_app())
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("big.wav", wav(40.0), "audio/wav")},  # > 1 MB: spooled to disk
        data=fields,
    )
    assert response.status_code == status, response.text
    assert closed == ["big.wav"]
