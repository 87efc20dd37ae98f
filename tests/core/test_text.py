"""The one text rule: which scripts are joined without spaces (serve_app/core/text.py)."""

from serve_app.core.text import (
    has_repetition_loop,
    is_unspaced,
    join_texts,
    join_tokens,
    repeats_a_phrase,
    text_weight,
)
from serve_app.core.transcript import stitch_segments
from serve_app.core.types import SegmentTranscript


def test_korean_segments_keep_the_space_between_words() -> None:
    # Hangul is East-Asian-wide, but Korean puts spaces between words.
    assert join_texts(["안녕하세요", "감사합니다"]) == "안녕하세요 감사합니다"
    text, _, _ = stitch_segments(
        [(0, 1000), (1500, 2500)], [SegmentTranscript("반갑습니다"), SegmentTranscript("좋아요")]
    )
    assert text == "반갑습니다 좋아요"


def test_chinese_and_japanese_segments_join_without_a_space() -> None:
    assert join_texts(["你好", "世界"]) == "你好世界"
    assert join_texts(["こんにちは", "カタカナ"]) == "こんにちはカタカナ"
    assert join_texts(["你好。", "再见"]) == "你好。再见"  # CJK punctuation is unspaced too


def test_mixed_scripts_get_a_space_at_the_boundary() -> None:
    assert join_texts(["hello", "世界"]) == "hello 世界"
    assert join_texts(["世界", "hello"]) == "世界 hello"
    assert join_texts([" a ", "", "b"]) == "a b"


def test_funasr_tokens_join_as_funasr_writes_them() -> None:
    assert join_tokens(["你", "好", "new", "york", "市"]) == "你好new york市"
    assert join_tokens(["사랑", "해요"]) == "사랑 해요"  # Korean tokens are spaced words
    assert join_tokens([]) == ""


def test_the_predicate() -> None:
    assert all(is_unspaced(ch) for ch in "中文かなカナ。\uff0c")
    assert not any(is_unspaced(ch) for ch in "한국어 abc1")


def test_density_weight_still_counts_hangul_as_wide() -> None:
    # Coverage weighs text per second of speech: a Hangul syllable is a wide character.
    assert text_weight("한국") == text_weight("中文") == 6.0
    assert text_weight("ab") == 2.0


def test_repetition_detector_spares_normal_text():
    assert not has_repetition_loop("The quick brown fox jumps over the lazy dog. " * 1)
    assert not has_repetition_loop("no, no, no. I said it three times")
    assert has_repetition_loop("thank you thank you thank you thank you")
    assert has_repetition_loop("我我我我")


def test_a_phrase_said_twice_in_a_row_is_found_and_normal_speech_is_not():
    # What Whisper tiny.en returned for a live partial here (2026-12-07).
    said = "Please call the customer service team tomorrow"
    seen = f"{said} {said.lower()}"
    assert repeats_a_phrase(seen)
    assert repeats_a_phrase("我们明天开会我们明天开会")
    assert not repeats_a_phrase("The quick brown fox jumps over the lazy dog.")
    assert not repeats_a_phrase("no, no, no. I said it three times")  # short words: spared
    assert not repeats_a_phrase("I think that I think that is right")  # a 3-word restart
    assert not repeats_a_phrase("")
