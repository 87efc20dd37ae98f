"""Channel split and diarization through the shared deployed app (real models).

The app of ``tests/served_apps.py`` has a ``speakers`` section with the real GE2E
encoder, so every test here reuses it. Talkers are espeak-ng voices that a speaker encoder
tells apart (``tests/speakers/conversations.py``); reference times are those of the
synthesized speech.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from scripts.common.conversations import EXTRA_SENTENCES, VOICES, _speak
from tests.reference import assert_wer_near_reference
from tests.speech import SENTENCES, requires_espeak

pytestmark = [pytest.mark.slow, requires_espeak]
RATE = 16000


@dataclass(frozen=True)
class Dialogue:
    samples: np.ndarray
    turns: tuple[tuple[int, float, float, str], ...]  # talker, start_s, end_s, text

    def channel(self, talker: int) -> np.ndarray:
        """Only ``talker``'s speech, silence elsewhere (one channel of a call recording)."""
        out = np.zeros_like(self.samples)
        for who, start_s, end_s, _ in self.turns:
            if who == talker:
                a, b = round(start_s * RATE), round(end_s * RATE)
                out[a:b] = self.samples[a:b]
        return out

    def text_of(self, talker: int) -> str:
        return " ".join(text for who, _, _, text in self.turns if who == talker)


def _dialogue(voices: tuple[int, int], sentences: list[str], tmp: Path, pause_s=0.8) -> Dialogue:
    """Alternating turns A, B, A, B... one sentence each, ``pause_s`` apart."""
    pieces: list[np.ndarray] = []
    turns: list[tuple[int, float, float, str]] = []
    clock = 0
    for index, text in enumerate(sentences):
        who = index % 2
        speech = _speak(text, VOICES[voices[who]], tmp)
        if pieces:
            pieces.append(np.zeros(round(pause_s * RATE), np.float32))
            clock += round(pause_s * RATE)
        turns.append((who, clock / RATE, (clock + len(speech)) / RATE, text))
        pieces.append(speech.astype(np.float32))
        clock += len(speech)
    return Dialogue(np.concatenate(pieces), tuple(turns))


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _talker_at(dialogue: Dialogue, start_s: float, end_s: float) -> int:
    overlap = [0.0, 0.0]
    for who, a, b, _ in dialogue.turns:
        overlap[who] += max(0.0, min(end_s, b) - max(start_s, a))
    return int(np.argmax(overlap))


def test_stereo_split_one_talker_per_channel(http, tmp_path, whisper_reference):
    sentences = [SENTENCES[i] for i in (1, 4, 6, 12)]
    dialogue = _dialogue((0, 1), sentences, tmp_path)
    left, right = dialogue.channel(0), dialogue.channel(1)
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("call.wav", _wav(np.stack([left, right], axis=1)), "audio/wav")},
        data={"response_format": "verbose_json", "channels": "split"},
    )
    assert resp.status_code == 200, resp.text
    segments = resp.json()["segments"]
    assert segments and [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    names = ("left", "right")
    # 100 % of segments on the channel whose talker speaks then.
    for seg in segments:
        assert seg["speaker"] == names[_talker_at(dialogue, seg["start"], seg["end"])], seg
    # Per channel, no worse than that channel transcribed alone by faster-whisper.
    for talker, samples in enumerate((left, right)):
        ours = " ".join(s["text"] for s in segments if s["speaker"] == names[talker])
        alone = whisper_reference.transcribe(samples)
        assert_wer_near_reference([dialogue.text_of(talker)], [ours], [alone])
    # The same file mixed: one speakerless transcript (today's behaviour).
    mixed = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("call.wav", _wav(np.stack([left, right], axis=1)), "audio/wav")},
        data={"response_format": "verbose_json"},
    ).json()
    assert all("speaker" not in s for s in mixed["segments"])
    three = np.stack([left, right, right], axis=1)
    resp = http.post(
        "/v1/audio/transcriptions",
        files={"file": ("three.wav", _wav(three), "audio/wav")},
        data={"channels": "split"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "channels"


def test_sixteen_concurrent_diarized_requests_get_their_own_speakers(asr_url, tmp_path):
    """Different voice pairs per request, all at once: each request's segments must follow
    its own talkers (embeddings of another request would scramble its clusters)."""
    pairs = list(combinations(range(len(VOICES)), 2))  # 10 pairs
    cases = []
    for i in range(16):
        a, b = pairs[i % len(pairs)]
        voices = (a, b) if i < len(pairs) else (b, a)
        sentences = [EXTRA_SENTENCES[(i + k) % len(EXTRA_SENTENCES)] for k in range(4)]
        cases.append(_dialogue(voices, sentences, tmp_path))

    async def send_all():
        async with httpx.AsyncClient(base_url=asr_url, timeout=600) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/audio/transcriptions",
                        files={"file": ("d.wav", _wav(d.samples), "audio/wav")},
                        data={
                            "model": "paraformer-tiny-random",  # fast; the text is not tested
                            "response_format": "verbose_json",
                            "diarize": "true",
                            "num_speakers": "2",
                        },
                    )
                    for d in cases
                )
            )

    for dialogue, resp in zip(cases, asyncio.run(send_all())):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert [s["speaker"] for s in body["speakers"]] == ["speaker_1", "speaker_2"]
        # Time-weighted share of speech whose label maps to the right talker (the first
        # talker to speak is speaker_1).
        right_s = total_s = 0.0
        for seg in body["segments"]:
            length_s = seg["end"] - seg["start"]
            talker = _talker_at(dialogue, seg["start"], seg["end"])
            right_s += length_s * (seg["speaker"] == f"speaker_{talker + 1}")
            total_s += length_s
        assert total_s > 0 and right_s / total_s >= 0.9, body["segments"]


def test_diarized_srt_vtt_and_speaker_text(http, tmp_path):
    dialogue = _dialogue((0, 2), [SENTENCES[3], SENTENCES[8]], tmp_path, pause_s=1.0)
    data = _wav(dialogue.samples)

    def post(**fields):
        resp = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("d.wav", data, "audio/wav")},
            data={"diarize": "true", **fields},
        )
        assert resp.status_code == 200, resp.text
        return resp.text

    srt = post(response_format="srt")
    assert "[speaker_1] " in srt and "[speaker_2] " in srt
    assert "<v speaker_2>" in post(response_format="vtt")
    lines = post(response_format="text", speaker_text="true").splitlines()
    assert [line.split("]")[0] for line in lines] == ["[speaker_1", "[speaker_2"]
    plain = post(response_format="text")
    assert "[" not in plain and plain.strip()
    models = http.get("/v1/models").json()["data"]
    assert all(m["capabilities"]["diarization"] for m in models if "capabilities" in m)


def test_diarization_throughput_script_smoke(asr_url, capsys):
    from scripts import stage_cost as script

    argv = ["--url", asr_url, "--files", "2", "--concurrency", "2", "--rounds", "1"]
    assert script.main([*argv, "--turns", "4"]) == 0  # every talker twice
    assert "diarization adds" in capsys.readouterr().out


def test_openai_client_extra_body_diarize(asr_url, tmp_path):
    from openai import OpenAI

    client = OpenAI(base_url=f"{asr_url}/v1", api_key="unused", max_retries=0, timeout=300)
    sentences = [SENTENCES[5], SENTENCES[9], SENTENCES[13], SENTENCES[16]]
    dialogue = _dialogue((2, 0), sentences, tmp_path)
    result = client.audio.transcriptions.create(
        model="whisper-tiny.en",
        file=("d.wav", _wav(dialogue.samples), "audio/wav"),
        response_format="verbose_json",
        extra_body={"diarize": True, "max_speakers": 3},
    )
    speakers = [seg.speaker for seg in result.segments]  # type: ignore[attr-defined]
    assert set(speakers) == {"speaker_1", "speaker_2"}, speakers
