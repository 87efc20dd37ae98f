"""The form parser: every field checked once, the cache key covering every output option."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData

from serve_app.core.errors import InvalidRequestError
from serve_app.online.forms import RequestOptions, optional_bool, optional_int, parse_form


def test_form_fields_become_typed_options():
    form = FormData(
        [
            ("model", " whisper-1 "),
            ("language", "en"),
            ("hotwords", "Ray  Serve"),
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
            ("timestamp_granularities[]", "segment"),
            ("timestamp_granularities[]", "word"),
            ("stream", "true"),
        ]
    )
    opts = parse_form(form)
    assert opts.model == "whisper-1"
    assert opts.recognition.language == "en"
    assert opts.recognition.hotwords == ("Ray", "Serve")
    assert opts.timestamp_granularities == ("word", "segment")
    assert opts.include_words and opts.stream


@pytest.mark.parametrize(
    ("pairs", "param"),
    [
        ([("response_format", "mp3")], "response_format"),
        ([("timestamp_granularities[]", "char")], "timestamp_granularities"),
        ([("stream", "maybe")], "stream"),
    ],
)
def test_bad_values_are_a_400_naming_the_field(pairs, param):
    with pytest.raises(InvalidRequestError) as info:
        parse_form(FormData(pairs))
    assert info.value.param == param


def test_delivery_options_are_not_part_of_the_output_key():
    base = RequestOptions()
    assert base.output_fields() == RequestOptions(stream=True, use_cache=False).output_fields()
    assert base.output_fields() != RequestOptions(response_format="srt").output_fields()
    lang = parse_form(FormData([("language", "de")]))
    assert lang.output_fields() != base.output_fields()


def test_int_and_bool_helpers():
    form = FormData([("n", "3"), ("b", "off"), ("bad", "x")])
    assert optional_int(form, "n") == 3
    assert optional_int(form, "missing") is None
    assert optional_bool(form, "b") is False
    with pytest.raises(InvalidRequestError):
        optional_int(form, "bad")
    with pytest.raises(InvalidRequestError):
        optional_int(form, "n", minimum=4)
