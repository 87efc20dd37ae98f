"""scripts/language_eval.py's scoring, on fake service and library callables (the real
run needs a served multilingual model: see docs/BENCHMARKS.md, "Languages")."""

from __future__ import annotations

import numpy as np

from scripts import language_eval as script
from serve_app.core.evaluation import error_units, unit_error_rate
from tests.speech import requires_espeak


def test_error_units_are_words_or_characters() -> None:
    assert error_units("Le train, pour Paris!", "fr") == ["le", "train", "pour", "paris"]
    assert error_units("今天 天气。", "zh") == ["今", "天", "天", "气"]
    assert unit_error_rate(["a b c d"], ["a x c"], "en") == 0.5
    assert unit_error_rate(["今天天气"], ["今天"], "zh") == 0.5


def test_rows_count_detection_agreement_and_error_rates() -> None:
    silent = np.zeros(160, dtype=np.float32)
    samples = [
        script.Sample("espeak", "fr", "un deux", silent),
        script.Sample("espeak", "fr", "trois quatre", silent + 1),
        script.Sample("espeak", "de", "eins zwei", silent + 2),
    ]
    # The service hears the second French file as Spanish; the library hears all right
    # but drops a word of each.
    service = {0: ("fr", "un deux"), 1: ("es", "trois quatre"), 2: ("de", "eins zwei")}
    library = {0: ("fr", "un"), 1: ("fr", "trois"), 2: ("de", "eins")}
    rows = script.evaluate(samples, lambda a: service[int(a[0])], lambda a: library[int(a[0])])
    by_language = {r.language: r for r in rows}
    fr, de = by_language["fr"], by_language["de"]
    assert (fr.files, fr.detected_service, fr.detected_library, fr.agree) == (2, 1, 2, 1)
    assert fr.error_rate_service == 0.0 and fr.error_rate_library == 0.5
    assert fr.detected_as == {"fr": 1, "es": 1}
    assert (de.files, de.detected_service, de.agree) == (1, 1, 1)
    table = script.render(rows)
    assert "| espeak | fr | 2 | 1 / 2 | 1/2 | WER 0.000 / 0.500 |" in table
    assert "all: 3 files, detected right 2 (service) / 3 (library)" in table


@requires_espeak
def test_espeak_files_join_sentences_with_pauses(tmp_path) -> None:
    assert set(script.CORPUS) == {"de", "fr", "es", "zh"}
    one = script.espeak_samples(["es"], 1, tmp_path)
    joined = script.espeak_samples(["es"], 2, tmp_path)
    assert [len(s.text.split()) for s in one][:2] == [11, 11]
    assert len(one) == 5 and len(joined) == 3  # 5 sentences: 2 + 2 + 1
    assert joined[0].text == one[0].text + " " + one[1].text
    pause = int(script.PAUSE_S * 16000)
    assert len(joined[0].audio) == len(one[0].audio) + pause + len(one[1].audio)
