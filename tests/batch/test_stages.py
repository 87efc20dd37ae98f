"""The job's stages without Ray: decode + VAD with a fake VAD, recognition through the
shared pipeline with a fake recognizer, long files in parts; the recognizer stage on
ONNX Runtime against torch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from serve_app.batch.stages import (
    DECODED_SCHEMA,
    OUTPUT_SCHEMA,
    PART_OUTPUT_SCHEMA,
    AssembleStage,
    DecodeVadStage,
    RecognizeStage,
    error_text,
    normalize_hotwords,
    normalize_language,
    recognize_rows,
    resolve_audio_ref,
    split_row,
    split_speech,
    table_from_rows,
)
from serve_app.config import AudioSettings, RecognizerSettings, VadSettings
from serve_app.core.errors import RecognitionError
from serve_app.core.types import RecognitionOptions
from tests.batch.helpers import (
    SR,
    _decoded,
    _FakeRecognizer,
    _FakeVad,
    _items,
    _speech,
    _stage,
    _write_wav,
)
from tests.speech import SENTENCES, requires_espeak, synthesize

# -- unit: decode + VAD stage (fake VAD) ----------------------------------------------------


def test_decode_stage_turns_bad_files_into_typed_error_rows(tmp_path):
    tone = 0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220)
    _write_wav(tmp_path / "good.wav", tone)
    _write_wav(tmp_path / "long.wav", np.zeros(11 * SR))
    (tmp_path / "text.wav").write_text("this is not audio at all, just text")
    (tmp_path / "empty.wav").write_bytes(b"")
    stage = _stage(tmp_path, max_duration_s=10)
    rows = [
        {"id": "good", "audio": "good.wav", "language": "en"},  # relative to the manifest
        {"id": "missing", "audio": str(tmp_path / "nope.wav")},
        {"id": "text", "audio": "text.wav"},
        {"id": "empty", "audio": "empty.wav"},
        {"id": "long", "audio": "long.wav"},
        {"id": "null", "audio": None},
    ]
    out = stage(pa.Table.from_pylist(rows)).to_pylist()
    by_id = {r["id"]: r for r in out}
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    good = by_id["good"]
    assert good["status"] == "ok" and good["error"] is None
    assert good["duration_s"] == pytest.approx(3.0)
    assert [(s["start_ms"], s["end_ms"]) for s in good["speech"]] == [
        (0, 1000),
        (1000, 2000),
        (2000, 3000),
    ]
    assert len(good["speech"][0]["audio"]) == SR * 4  # float32 samples of 1 s
    assert good["language"] == "en"
    assert by_id["missing"]["error"].startswith("not_found: ")
    assert by_id["text"]["error"].startswith("invalid_audio: ")
    assert by_id["empty"]["error"].startswith("invalid_audio: ")
    assert by_id["long"]["error"].startswith("audio_too_long: ")
    assert by_id["null"]["error"].startswith("invalid_request: ")
    for row_id in ("missing", "text", "empty", "long", "null"):
        assert by_id[row_id]["status"] == "error" and by_id[row_id]["speech"] == []


def test_decode_stage_packs_segments_like_the_online_route(tmp_path):
    tone = 0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220)
    _write_wav(tmp_path / "good.wav", np.concatenate([tone, np.zeros(2 * SR), tone]))
    stage = DecodeVadStage(
        AudioSettings(),
        VadSettings(),
        base_dir=str(tmp_path),
        segmenter=_FakeVad(),
        pack_segments_s=4.0,
    )
    (row,) = stage(pa.Table.from_pylist([{"id": "a", "audio": "good.wav"}])).to_pylist()
    # Six 1 s windows of speech (0-3 s, 5-8 s) become pieces of at most 4 s.
    assert [(s["start_ms"], s["end_ms"]) for s in row["speech"]] == [(0, 3000), (5000, 8000)]
    assert len(row["speech"][0]["audio"]) == 3 * SR * 4


def test_manifest_values_are_normalized():
    assert normalize_hotwords("  alpha  beta ") == ["alpha", "beta"]
    assert normalize_hotwords(["alpha", " ", None, "beta"]) == ["alpha", "beta"]
    assert normalize_hotwords(None) == []
    assert normalize_language("  ") is None and normalize_language("zh") == "zh"


def test_audio_refs_and_error_text():
    assert resolve_audio_ref("a/b.wav", "/m") == "/m/a/b.wav"
    assert resolve_audio_ref("/x/b.wav", "/m") == "/x/b.wav"
    assert resolve_audio_ref("s3://bucket/b.wav", "/m") == "s3://bucket/b.wav"
    assert error_text(RecognitionError("boom")) == "recognition_failed: boom"
    assert error_text(ValueError("x")) == "internal_error: ValueError: x"


# -- unit: recognize stage (fake recognizer) -------------------------------------------------


def test_recognize_flattens_all_files_into_one_batch_and_regroups():
    rows = [
        _decoded("a", _speech((1, (0, 500)), (2, (900, 2000))), language="fr"),
        _decoded("bad", status="error", error="invalid_audio: nope"),
        _decoded("silence"),
        _decoded("b", _speech((3, (100, 400)), (-1, (700, 800)))),
        _decoded("c", _speech((4, (0, 300)))),
    ]
    fake = _FakeRecognizer()
    out = recognize_rows(
        table_from_rows(rows, DECODED_SCHEMA),
        fake,
        model_name="m",
        default_options=RecognitionOptions(language="en"),
    )
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 5  # every segment, one call
    by_id = {r["id"]: r for r in out}
    assert [r["id"] for r in out] == ["a", "bad", "silence", "b", "c"]
    assert by_id["a"]["text"] == "v1 fr v2 fr"  # per-file language over the default
    assert by_id["a"]["segments"] == [
        {"start_s": 0.0, "end_s": 0.5, "text": "v1 fr"},
        {"start_s": 0.9, "end_s": 2.0, "text": "v2 fr"},
    ]
    assert by_id["c"]["text"] == "v4 en"
    assert by_id["bad"] == {
        "id": "bad",
        "text": None,
        "segments": None,
        "duration_s": 9.0,
        "status": "error",
        "error": "invalid_audio: nope",
        "model": "m",
    }
    assert by_id["silence"]["status"] == "ok"
    assert by_id["silence"]["text"] == "" and by_id["silence"]["segments"] == []
    assert by_id["b"]["status"] == "error"  # its failed segment fails it, not its batch
    assert by_id["b"]["error"] == "recognition_failed: bad segment"
    assert by_id["b"]["text"] is None
    assert table_from_rows(out, OUTPUT_SCHEMA).schema == OUTPUT_SCHEMA


def test_recognizer_crash_fails_its_files_only():
    class Broken:
        def transcribe_batch(self, jobs):
            raise RuntimeError("CUDA error")

    rows = [_decoded("a", _speech((1, (0, 500)))), _decoded("x", status="error", error="e: f")]
    out = recognize_rows(
        table_from_rows(rows, DECODED_SCHEMA),
        Broken(),
        model_name="m",
        default_options=RecognitionOptions(),
    )
    assert out[0]["status"] == "error"
    assert out[0]["error"] == "internal_error: RuntimeError: CUDA error"
    assert out[1]["error"] == "e: f"


# -- unit: long files in parts ---------------------------------------------------------------


def test_split_speech_makes_balanced_consecutive_parts():
    lengths = [10_000] * 61  # 610 s of speech
    parts = split_speech(_items(lengths), part_speech_s=120)
    assert len(parts) == 6  # ceil(610 / 120), not 5 full parts and a 10 s one
    assert [i for part in parts for i in part] == _items(lengths)  # in order, each once
    sizes = [sum(i["end_ms"] - i["start_ms"] for i in part) for part in parts]
    assert max(sizes) - min(sizes) <= 10_000  # within one item of each other
    varied = [3000, 29_000, 500, 12_000, 30_000, 8000, 1000, 27_000, 15_000, 4000]
    parts = split_speech(_items(varied), part_speech_s=40)
    assert [i for part in parts for i in part] == _items(varied)
    assert len(parts) == 4
    assert all(sum(i["end_ms"] - i["start_ms"] for i in p) <= 40_000 + 30_000 for p in parts)
    assert split_speech(_items(lengths), part_speech_s=0) == [_items(lengths)]
    assert split_speech(_items([5000, 5000]), part_speech_s=10) == [_items([5000, 5000])]
    assert split_speech([], part_speech_s=10) == [[]]


def test_split_row_keeps_errors_and_files_with_speakers_whole():
    speech = _speech(*[(v, (v * 1000, v * 1000 + 600)) for v in range(1, 11)])
    row = _decoded("a", speech)
    parts = split_row(row, part_speech_s=2.0)  # 6 s of speech -> 3 parts of 2 s
    assert [(p["part"], p["parts"]) for p in parts] == [(0, 3), (1, 3), (2, 3)]
    assert sorted(len(p["speech"]) for p in parts) == [3, 3, 4]
    assert all(p["id"] == "a" and p["duration_s"] == 9.0 for p in parts)
    for whole in (
        _decoded("e", status="error", error="invalid_audio: x"),
        {**row, "turns": [{"start_s": 0.0, "end_s": 9.0, "speaker": "SPEAKER_1"}]},
        {**row, "channel_names": ["agent", "customer"]},
    ):
        (kept,) = split_row(whole, part_speech_s=2.0)
        assert (kept["part"], kept["parts"]) == (None, None)
        assert kept["speech"] == whole["speech"]
    (short,) = split_row(row, part_speech_s=60)
    assert short["parts"] is None


def test_a_file_in_parts_gives_the_transcript_of_the_whole_file():
    """Parts recognized in separate calls, arriving out of order and one twice (a retried
    call), assemble into the row the whole file gives in one call."""
    speech = _speech(*[(v, (v * 1000, v * 1000 + 600)) for v in range(1, 11)])
    row = _decoded("long", speech, language="fr")
    other = _decoded("short", _speech((7, (0, 400))))
    opts = RecognitionOptions(language="en")

    def recognize(rows):
        table = table_from_rows(rows, DECODED_SCHEMA)
        return recognize_rows(table, _FakeRecognizer(), model_name="m", default_options=opts)

    (whole,) = recognize([{**row, "part": None, "parts": None}])
    parts = [recognize([p])[0] for p in split_row(row, part_speech_s=2.0)]
    (short,) = recognize([{**other, "part": None, "parts": None}])
    assert len(parts) == 3 and all(p["text"] for p in parts)

    assembler = AssembleStage()
    assert assembler.add([parts[2], short]) == [short]  # whole files pass straight through
    assert assembler.waiting_files == 1
    assert assembler.add([parts[0], parts[2]]) == []
    (merged,) = assembler.add([parts[1]])
    assert assembler.waiting_files == 0
    expected = {k: whole.get(k) for k in OUTPUT_SCHEMA.names}
    assert merged == expected
    assert merged["text"] == " ".join(f"v{v} fr" for v in range(1, 11))
    assert len(merged["segments"]) == 10

    # Through Ray Data's table interface: parts in, output rows out.
    table = AssembleStage()(table_from_rows([*parts, short], PART_OUTPUT_SCHEMA))
    assert table.schema == OUTPUT_SCHEMA
    want = table_from_rows([short, expected], OUTPUT_SCHEMA).to_pylist()
    assert sorted(table.to_pylist(), key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])

    # A failed segment in one part fails the file, as it fails the whole file's row.
    bad = _decoded("bad", _speech(*[(v, (v * 1000, v * 1000 + 600)) for v in (1, 2, -1, 4)]))
    (whole_bad,) = recognize([{**bad, "part": None, "parts": None}])
    bad_parts = [recognize([p])[0] for p in split_row(bad, part_speech_s=1.0)]
    assert len(bad_parts) > 1
    (merged_bad,) = AssembleStage().add(bad_parts)
    assert merged_bad == {k: whole_bad.get(k) for k in OUTPUT_SCHEMA.names}
    assert merged_bad["status"] == "error" and merged_bad["text"] is None


def test_decode_stage_emits_a_long_file_in_parts(tmp_path):
    tone = 0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 220)
    _write_wav(tmp_path / "long.wav", np.concatenate([tone, np.zeros(2 * SR), tone]))
    _write_wav(tmp_path / "short.wav", tone[:SR])
    stage = DecodeVadStage(
        AudioSettings(),
        VadSettings(),
        base_dir=str(tmp_path),
        segmenter=_FakeVad(),
        part_speech_s=2.0,
    )
    rows = [{"id": "long", "audio": "long.wav"}, {"id": "short", "audio": "short.wav"}]
    out = stage(pa.Table.from_pylist(rows))
    assert out.schema == DECODED_SCHEMA
    got = [(r["id"], r["part"], r["parts"], len(r["speech"])) for r in out.to_pylist()]
    # Six 1 s pieces of speech -> three parts of two; the 1 s file stays one row.
    assert got == [
        ("long", 0, 3, 2),
        ("long", 1, 3, 2),
        ("long", 2, 3, 2),
        ("short", None, None, 1),
    ]
    spans = [(s["start_ms"], s["end_ms"]) for r in out.to_pylist()[:3] for s in r["speech"]]
    assert spans == [
        (0, 1000),
        (1000, 2000),
        (2000, 3000),
        (5000, 6000),
        (6000, 7000),
        (7000, 8000),
    ]


# -- the job's recognizer actor on ONNX Runtime (real classes, no Ray) ----------------------


@requires_espeak
def test_recognize_stage_on_onnx_runtime_gives_the_torch_rows(
    tmp_path, random_models_dir, monkeypatch
):
    """What a Ray Data recognizer actor runs, with ``runtime: onnx``: the rows the torch
    runtime gives on the same random weights (fp32; the log-probability bound is in
    tests/recognizers/test_funasr_onnx.py), every segment of a block in one call."""
    monkeypatch.setenv("ASR_ONNX_CACHE_DIR", str(tmp_path / "onnx"))
    rows = []
    for i in range(3):
        speech, start_ms = [], 0
        for k in range(1 + i):
            audio = np.asarray(synthesize(SENTENCES[i + k], tmp_path), np.float32)
            end_ms = start_ms + len(audio) * 1000 // SR
            speech.append({"start_ms": start_ms, "end_ms": end_ms, "audio": audio.tobytes()})
            start_ms = end_ms + 800
        rows.append(_decoded(f"f{i}", speech))
    table = table_from_rows(rows, DECODED_SCHEMA)
    base = {"name": "p", "backend": "funasr", "model": str(random_models_dir / "paraformer-tiny")}
    out = {
        runtime: RecognizeStage(RecognizerSettings.model_validate({**base, "runtime": runtime}))(
            table
        ).to_pylist()
        for runtime in ("torch", "onnx")
    }
    assert [r["status"] for r in out["onnx"]] == ["ok"] * 3
    assert any(r["text"] for r in out["torch"])
    for torch_row, onnx_row in zip(out["torch"], out["onnx"]):
        assert onnx_row["text"] == torch_row["text"]
        assert onnx_row["segments"] == torch_row["segments"]
