"""Text rules shared by every stage: which scripts are written without spaces.

One rule, used wherever texts are joined or counted in words: stitching segment texts
(:func:`serve_app.core.transcript.join_texts`), joining FunASR's tokens, and the coverage
checks' word units. Chinese and Japanese are written without spaces between words, so
their characters are joined directly and counted one unit each. Korean is written WITH
spaces between words although Hangul is East-Asian-wide: a rule on
``unicodedata.east_asian_width`` alone glued Korean words across segments.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence

# (first, last) code points of scripts written without spaces between words.
_UNSPACED_RANGES = (
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation (、。「」)
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3190, 0x319F),  # Kanbun
    (0x31C0, 0x31FF),  # CJK strokes, Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFF60),  # full-width ASCII forms and punctuation (U+FF0C comma, U+FF01 ...)
    (0xFF61, 0xFF9F),  # half-width CJK punctuation and Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)


def is_unspaced(ch: str) -> bool:
    """Whether ``ch`` belongs to a script written without spaces between words (Chinese,
    Japanese kana, their punctuation); False for Hangul, Latin, digits, spaces."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _UNSPACED_RANGES)


def is_wide(ch: str) -> bool:
    """East-Asian wide or full-width (Han, kana AND Hangul): one such character carries
    about as much speech as a short word, which is what text-density checks weigh. Not a
    joining rule: use :func:`is_unspaced` for that."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def needs_space(left: str, right: str) -> bool:
    """Whether a space goes between two texts joined in this order (both non-empty)."""
    return not (is_unspaced(left[-1]) and is_unspaced(right[0]))


def has_words(text: str) -> bool:
    """Whether ``text`` has a letter or digit of any script: what Whisper says for music
    or a cough ("." or "♪") is no text."""
    return any(ch.isalnum() for ch in text)


def join_texts(texts: Sequence[str]) -> str:
    """Segment texts -> one text: a space between them, none between two unspaced
    characters ("你好" + "世界" -> "你好世界", "안녕하세요" + "감사합니다" with a space)."""
    out = ""
    for text in texts:
        text = text.strip()
        if not text:
            continue
        if out and needs_space(out, text):
            out += " "
        out += text
    return out


def join_tokens(tokens: Sequence[str]) -> str:
    """FunASR's word tokens -> text as FunASR itself writes it: a space only between two
    spaced words ("你","好","new","york","市" -> "你好new york市"), so Paraformer's text
    equals the reference library's byte for byte. Same predicate as :func:`join_texts`."""
    out = ""
    for token in tokens:
        if out and not is_unspaced(token[:1] or " ") and not is_unspaced(out[-1]):
            out += " "
        out += token
    return out


# -- checks of decoded text (serve_app.core.coverage, live partials) ---------------------


def text_weight(text: str) -> float:
    """Letters and digits count 1, wide characters (Han, kana, Hangul) 3: one ~ a short
    word of speech."""
    return float(sum(3 if is_wide(ch) else 1 for ch in text if ch.isalnum()))


def compression_ratio(text: str) -> float:
    """faster-whisper's measure: len(utf-8) / len(zlib(utf-8))."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


WORD = re.compile(r"\w+", re.UNICODE)


def units(text: str) -> list[str]:
    """Words; characters of unspaced scripts (Chinese, Japanese) one unit each."""
    out: list[str] = []
    for word in WORD.findall(text.lower()):
        if any(is_unspaced(ch) for ch in word):
            out.extend(word)
        else:
            out.append(word)
    return out


def has_repetition_loop(text: str, min_repeats: int = 4, max_ngram: int = 6) -> bool:
    """An n-gram (n <= ``max_ngram``) repeated back to back ``min_repeats`` times."""
    words = units(text)
    repeats = min_repeats
    for n in range(1, max_ngram + 1):
        for i in range(len(words) - n * repeats + 1):
            gram = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == gram for k in range(1, repeats)):
                return True
    return False


def repeats_a_phrase(text: str, min_units: int = 4) -> bool:
    """A run of at least ``min_units`` words (characters of unspaced scripts) immediately
    followed by itself: "call the team tomorrow call the team tomorrow". Whisper does this
    on a prefix that ends mid-sentence (a live partial); read speech all but never does."""
    words = units(text)
    for n in range(min_units, len(words) // 2 + 1):
        # Runs of positions where a unit equals the one n later: a run of n is a repeat
        # (linear per n; a live partial is checked on the ingress's event loop).
        run = 0
        for i in range(len(words) - n):
            run = run + 1 if words[i] == words[i + n] else 0
            if run >= n:
                return True
    return False
