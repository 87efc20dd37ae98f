"""WhisperBackend on the real Whisper tiny.en (CTranslate2) over espeak-ng speech.

The reference is faster-whisper itself: ``WhisperModel.transcribe`` run one file at a time.
Our backend transcribes a whole batch in one encode + one generate call, so it must match
faster-whisper's own sequential decode word for word when the decoding settings are the
same, and stay within a small WER margin of its default (timestamped) greedy mode.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serve_app.core.errors import RecognitionError
from serve_app.core.evaluation import word_error_rate
from serve_app.core.types import RecognitionOptions, SegmentJob, SegmentTranscript
from serve_app.recognizers.base import AsrBackend, BatchedRecognizer
from serve_app.recognizers.whisper_backend import (
    WhisperBackend,
    partial_frames,
    resolve_compute_type,
    split_by_timestamps,
)
from tests.reference import allowed_wer, text_distance
from tests.speech import SENTENCES, have_espeak, silence, synthesize

MODEL_FOLDER = "whisper-tiny.en"
CPU_THREADS = int(os.environ.get("ASR_CPU_THREADS") or min(4, os.cpu_count() or 1))

# Our batched greedy decode runs without timestamp tokens; faster-whisper's default decode
# predicts timestamps, which conditions the text slightly differently. On these 16 sentences
# (142 words) that costs tiny.en 0-3 words either way (measured: int8 +3 words, float32
# +0), so the margin is 0.03 (~4 words): a real regression (wrong features, a dropped
# prompt token, padding leaking into the text) costs far more.
WER_MARGIN_VS_SEQUENTIAL = 0.03
# Batched vs one at a time (or vs faster-whisper's own one-item decode): bit-for-bit equal
# on the CPU this was written on, but not guaranteed: int8 (and fp32) GEMM kernels may
# round differently for another batch shape (seen for int8 on an AVX2-only Zen 1), and a
# greedy decode turns that into a different word. Allowed: a word or two of the 16
# sentences (142 words), and at most 2 words in any one item; a real batching bug (padding
# leaking in, items swapped or cut) changes whole sentences.
MAX_BATCH_SHAPE_WER = 0.03
MAX_BATCH_SHAPE_ITEM_DISTANCE = 0.25


def assert_same_text_up_to_batch_shape(batched: list[str], alone: list[str]) -> None:
    assert len(batched) == len(alone)
    for one, many in zip(alone, batched):
        assert text_distance(one, many) <= MAX_BATCH_SHAPE_ITEM_DISTANCE, (one, many)
    assert word_error_rate(alone, batched) <= MAX_BATCH_SHAPE_WER, (alone, batched)


@pytest.fixture(scope="module")
def whisper_dir(models_dir: Path) -> Path:
    path = models_dir / MODEL_FOLDER
    if not (path / "model.bin").is_file():
        pytest.skip(f"{path} is not provisioned (serve_app/tools/provision_models.py)")
    return path


@pytest.fixture(scope="module")
def backend(whisper_dir: Path) -> WhisperBackend:
    backend = WhisperBackend(str(whisper_dir), compute_type="int8", cpu_threads=CPU_THREADS)
    backend.warmup()
    return backend


@pytest.fixture(scope="module")
def sentences_16(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    tmp = tmp_path_factory.mktemp("whisper-tts")
    return [synthesize(text, tmp) for text in SENTENCES[:16]]


@pytest.fixture(scope="module")
def cut_sentences(sentences_16) -> list[np.ndarray]:
    """8 sentences cut to 35-98 % of their length: every item is padded differently."""
    return [
        audio[: int(len(audio) * (0.35 + 0.09 * i))] for i, audio in enumerate(sentences_16[:8])
    ]


@pytest.fixture(scope="module")
def batched_16(backend, sentences_16) -> list[str]:
    """The 16 sentences as ONE forward pass (shared by the tests that compare it)."""
    return texts(backend.forward([SegmentJob(audio) for audio in sentences_16]))


def texts(results: list[SegmentTranscript]) -> list[str]:
    return [result.text for result in results]


# -- no model needed ----------------------------------------------------------------------


class _FakeTokenizer:
    timestamp_begin = 1000

    def decode(self, tokens: list[int]) -> str:
        return " ".join(f"w{t}" for t in tokens)


def test_split_by_timestamps_pairs_and_edges() -> None:
    ts = _FakeTokenizer.timestamp_begin
    tokens = [ts + 0, 1, 2, ts + 100, ts + 100, 3, ts + 250, 4]  # last text has no end
    spans = split_by_timestamps(tokens, _FakeTokenizer(), duration_s=4.0)
    assert [(s.start_s, s.end_s, s.text) for s in spans] == [
        (0.0, 2.0, "w1 w2"),
        (2.0, 4.0, "w3"),  # 5.0 s clamped to the item
        (4.0, 4.0, "w4"),  # after the last timestamp: up to the item's end
    ]
    # No timestamps at all: one span over the whole item.
    assert [(s.start_s, s.end_s) for s in split_by_timestamps([5, 6], _FakeTokenizer(), 3.0)] == [
        (0.0, 3.0)
    ]


def test_partial_window_grows_with_the_longest_item_up_to_whisper_s_window() -> None:
    assert partial_frames(3 * 16000, 10.0) == 1000  # the configured window
    assert partial_frames(int(9.5 * 16000), 10.0) == 1500  # + 1 s of padding, in 5 s steps
    assert partial_frames(12 * 16000, 10.0) == 1500
    assert partial_frames(int(29.5 * 16000), 10.0) == 3000  # never over 30 s
    assert partial_frames(3 * 16000, 20.0) == 2000


def test_compute_type_mapping() -> None:
    assert resolve_compute_type("fp32", "cpu") == "float32"
    assert resolve_compute_type("fp16", "cuda") == "float16"
    assert resolve_compute_type("bf16", "cuda") == "bfloat16"
    assert resolve_compute_type("int8", "cpu") == "int8"
    assert resolve_compute_type("int8_float16", "cuda") == "int8_float16"  # pass-through
    assert resolve_compute_type(None, "cpu") == "int8"
    assert resolve_compute_type(None, "cuda") == "float16"


@pytest.mark.parametrize("model_ref", ["not-a-whisper-size", "example-org/no-such-whisper"])
def test_unknown_model_fails_fast_offline(model_ref, tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    # Never touch the network from a test, whatever this machine can reach.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match="provision_models"):
        WhisperBackend(model_ref, models_dir=tmp_path)
    assert time.monotonic() - started < 10


def test_asr_offline_means_no_download_is_tried(tmp_path, monkeypatch) -> None:
    """ASR_OFFLINE is honoured by every backend: Whisper does not even try the hub."""
    import faster_whisper.utils

    tried: list[tuple[str, bool]] = []

    def download_model(ref: str, local_files_only: bool = False, **_: object) -> str:
        tried.append((ref, local_files_only))
        raise FileNotFoundError("not cached")

    monkeypatch.setattr(faster_whisper.utils, "download_model", download_model)
    monkeypatch.setenv("ASR_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="downloads are off"):
        WhisperBackend("tiny.en", models_dir=tmp_path)
    assert tried == [("tiny.en", True)]  # the local cache only


# -- the real model -----------------------------------------------------------------------


def test_loads_by_folder_name_under_models_dir(whisper_dir: Path) -> None:
    backend = WhisperBackend(MODEL_FOLDER, models_dir=whisper_dir.parent, cpu_threads=1)
    assert isinstance(backend, AsrBackend)
    assert backend.name == "whisper-tiny.en"
    assert backend.compute_type == "int8"
    assert not backend.is_multilingual


@pytest.mark.slow
def test_wer_of_one_batch_vs_faster_whisper_sequential(backend, sentences_16, batched_16) -> None:
    batched = batched_16
    model = backend._model  # faster-whisper's WhisperModel, same weights and compute type
    sequential = [
        " ".join(s.text.strip() for s in model.transcribe(audio, language="en", beam_size=1)[0])
        for audio in sentences_16
    ]
    references = SENTENCES[:16]
    wer_batched = word_error_rate(references, batched)
    wer_sequential = word_error_rate(references, sequential)
    detail = f"batched WER {wer_batched:.3f}, sequential WER {wer_sequential:.3f}"
    assert wer_batched <= wer_sequential + WER_MARGIN_VS_SEQUENTIAL, detail


@pytest.mark.slow
def test_one_batch_equals_faster_whisper_decode_item_by_item(
    backend, sentences_16, batched_16
) -> None:
    # Same settings as ours: greedy, no timestamps, no temperature fallback.
    batched = batched_16
    model = backend._model
    sequential = [
        " ".join(
            s.text.strip()
            for s in model.transcribe(
                audio, language="en", beam_size=1, without_timestamps=True, temperature=0.0
            )[0]
        )
        for audio in sentences_16
    ]
    # Same arithmetic (one item per decode, same features and settings): exactly equal.
    alone = [backend.forward([SegmentJob(audio)])[0].text for audio in sentences_16]
    assert alone == sequential
    # One batch of 16 vs one item at a time: equal up to batch-shape rounding.
    assert_same_text_up_to_batch_shape(batched, sequential)


@pytest.mark.slow
@pytest.mark.parametrize("compute_type", ["int8", "float32"])
def test_batched_equals_one_at_a_time(whisper_dir, cut_sentences, compute_type) -> None:
    backend = WhisperBackend(str(whisper_dir), compute_type=compute_type, cpu_threads=CPU_THREADS)
    jobs = [SegmentJob(audio) for audio in cut_sentences]
    batched = texts(backend.forward(jobs))
    alone = [backend.forward([job])[0].text for job in jobs]
    # The same batch again: the arithmetic is deterministic, so exactly the same.
    assert texts(backend.forward(jobs)) == batched
    assert_same_text_up_to_batch_shape(batched, alone)
    assert sum(bool(text) for text in batched) >= 6  # real speech, real text


@pytest.mark.slow
def test_prompt_reaches_the_decoder(backend, tmp_path) -> None:
    if not have_espeak():
        pytest.skip("espeak-ng and sox are needed")
    audio = synthesize("The children played football in the park after school.", tmp_path)
    recorded: list[list[list[int]]] = []
    real_model = backend._model.model

    class Spy:
        def __getattr__(self, name):
            return getattr(real_model, name)

        def generate(self, encoder_output, prompts, **kwargs):
            recorded.append(prompts)
            return real_model.generate(encoder_output, prompts, **kwargs)

    options = RecognitionOptions(prompt="Football.")
    backend._model.model = Spy()
    try:
        prompted = backend.forward([SegmentJob(audio, options), SegmentJob(audio, options)])
    finally:
        backend._model.model = real_model
    tokenizer = backend._tokenizer("en")
    expected = [tokenizer.sot_prev, *tokenizer.encode(" Football.")]
    assert all(prompt[: len(expected)] == expected for prompt in recorded[0])
    assert "football" in prompted[0].text.lower()  # tiny.en alone hears "foot all"
    assert prompted[0] == prompted[1]

    backend._model.model = Spy()
    try:
        backend.forward([SegmentJob(audio, RecognitionOptions(hotwords=("football", "park")))])
    finally:
        backend._model.model = real_model
    expected = [tokenizer.sot_prev, *tokenizer.encode(" football park")]
    assert recorded[1][0][: len(expected)] == expected


def test_group_key_covers_prompt_and_hotwords_not_language(backend) -> None:
    key = backend.group_key
    assert key(RecognitionOptions()) == key(RecognitionOptions(language="de"))
    assert key(RecognitionOptions(prompt=" Hello ")) == key(RecognitionOptions(prompt="Hello"))
    assert key(RecognitionOptions(prompt="")) == key(RecognitionOptions())
    assert key(RecognitionOptions(prompt="a")) != key(RecognitionOptions(prompt="b"))
    assert key(RecognitionOptions(hotwords=("x",))) != key(RecognitionOptions())
    with pytest.raises(ValueError, match="share prompt"):
        backend.forward(
            [SegmentJob(silence(0.5)), SegmentJob(silence(0.5), RecognitionOptions(prompt="x"))]
        )


@pytest.mark.slow
def test_language_on_english_only_model(backend, sentences_16) -> None:
    jobs = [SegmentJob(sentences_16[0], RecognitionOptions(language=lang)) for lang in ("de", None)]
    german, default = backend.forward(jobs)  # one batch: language is per item
    assert german.language == default.language == "en"
    assert german.text == default.text


def test_silence_and_empty_segments_give_no_text(backend) -> None:
    # Faint noise goes through the model (Whisper's no-speech rule); digital silence and
    # empty segments are answered without it (30 s of zeros makes tiny.en say "you").
    noise = (0.003 * np.random.default_rng(0).standard_normal(32_000)).astype(np.float32)
    jobs = [
        SegmentJob(silence(2.0)),
        SegmentJob(noise),
        SegmentJob(np.zeros(0, np.float32)),
        SegmentJob(silence(30.0)),
    ]
    results = backend.forward(jobs)
    assert texts(results) == ["", "", "", ""]
    assert {result.language for result in results} == {"en"}


def test_segment_longer_than_window_is_rejected(backend) -> None:
    with pytest.raises(ValueError, match="30 s window"):
        backend.forward([SegmentJob(silence(30.5))])
    thirty_s = (0.3 * np.sin(np.arange(30 * 16_000) / 8.0)).astype(np.float32)
    assert isinstance(backend.forward([SegmentJob(thirty_s)])[0], SegmentTranscript)


@pytest.mark.slow
def test_runs_under_batched_recognizer(backend, sentences_16) -> None:
    prompt = RecognitionOptions(prompt="Vegetables.")
    jobs = [
        SegmentJob(sentences_16[1]),
        SegmentJob(sentences_16[11], prompt),
        SegmentJob(silence(31.0)),  # over the window: fails alone
        SegmentJob(sentences_16[4]),
        SegmentJob(sentences_16[12], prompt),
    ]
    runner = BatchedRecognizer(backend, max_forward_audio_s=60.0, max_batch_items=8)
    results = runner.transcribe_batch(jobs)
    assert isinstance(results[2], RecognitionError)
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, SegmentTranscript) for r in good)
    refs = [SENTENCES[i] for i in (1, 11, 4, 12)]
    library = [
        " ".join(
            s.text.strip() for s in backend._model.transcribe(a, language="en", beam_size=1)[0]
        )
        for a in (sentences_16[i] for i in (1, 11, 4, 12))
    ]
    assert word_error_rate(refs, [r.text for r in good]) <= allowed_wer(refs, library)
    assert runner.last_stats.num_failed_items == 1


@pytest.mark.slow
def test_concurrent_forward_calls_agree(backend, sentences_16) -> None:
    jobs = [SegmentJob(audio) for audio in sentences_16[:2]]
    expected = texts(backend.forward(jobs))
    results: list[list[str]] = []

    def work() -> None:
        results.append(texts(backend.forward(jobs)))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected, expected]


def test_packed_item_comes_back_in_timed_sentences(whisper_dir, sentences_16) -> None:
    """Three sentences with pauses in one item (as segment packing makes them): with
    timestamps on, each sentence returns as its own span, near where it was spoken, and
    the words are about as right as decoding each sentence alone."""
    timed = WhisperBackend(
        str(whisper_dir), compute_type="int8", cpu_threads=CPU_THREADS, timestamps=True
    )
    chosen = range(3, 6)
    parts, bounds_s, t = [], [], 0.0
    for i in chosen:
        parts += [sentences_16[i], silence(1.5)]
        bounds_s.append((t, t + len(sentences_16[i]) / 16000))
        t += len(sentences_16[i]) / 16000 + 1.5
    (result,) = timed.forward([SegmentJob(np.concatenate(parts))])
    assert len(result.spans) == 3, result.spans
    for span, (start_s, end_s) in zip(result.spans, bounds_s):
        assert abs(span.start_s - start_s) < 1.0 and abs(span.end_s - end_s) < 1.5, span
    assert result.text == " ".join(span.text for span in result.spans)
    references = [SENTENCES[i] for i in chosen]
    alone = texts(timed.forward([SegmentJob(sentences_16[i]) for i in chosen]))
    packed_wer = word_error_rate(references, [span.text for span in result.spans])
    assert packed_wer <= word_error_rate(references, alone) + 0.1, result.spans


def test_capabilities_of_an_english_only_model(backend) -> None:
    caps = backend.capabilities()
    assert caps.languages == ("en",) and not caps.translation and not caps.language_detection
    assert caps.word_timestamps and caps.punctuation and caps.hotwords == "prompt"
    assert caps.to_json()["diarization"] is False


def test_live_partials_encode_a_shorter_window_and_read_as_well(
    backend, sentences_16, batched_16, monkeypatch
) -> None:
    """partial_window_s: a forward of live partials only (background items) encodes 10 s
    instead of 30 (a third of the encoder's time); finals and files keep 30 s. Measured on
    12 of these sentences: WER 0.103 at 10 s, 0.159 at 30 s; the bar is the 30 s WER + 0.1
    (as Moonshine's int8 partial encoder's): a window that cut the audio would lose words
    of every sentence, and a window of 5 s made Whisper loop."""
    monkeypatch.setattr(backend, "partial_window_s", 10.0)  # as WhisperBackend(partial_window_s=10)
    frames: list[int] = []
    encode = backend._model.encode

    def spy(features, *args, **kwargs):
        frames.append(features.shape[-1])
        return encode(features, *args, **kwargs)

    monkeypatch.setattr(backend._model, "encode", spy)
    partials = texts(backend.forward([SegmentJob(a, priority=1) for a in sentences_16]))
    backend.forward([SegmentJob(sentences_16[0]), SegmentJob(sentences_16[1], priority=1)])
    assert frames == [1000, 3000]  # a batch with a final in it is a final's forward
    references = SENTENCES[:16]
    bar = word_error_rate(references, batched_16) + 0.1
    assert word_error_rate(references, partials) <= bar, (partials, batched_16)
