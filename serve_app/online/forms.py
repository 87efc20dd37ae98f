"""What a client asked of one transcription request, parsed and checked once.

The ingress reads the multipart form of ``/v1/audio/transcriptions`` (and
``/v1/audio/translations``) into one frozen :class:`RequestOptions`. Everything that can
change the response lives here, so the result cache's key (:meth:`output_fields`) cannot
forget an option: a new option is a new field, and it is part of the key unless it is
listed in ``_NOT_OUTPUT``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from starlette.datastructures import UploadFile

from serve_app.core.diarization import DiarizationOptions
from serve_app.core.errors import InvalidRequestError
from serve_app.core.transcript import RESPONSE_FORMATS
from serve_app.core.types import RecognitionOptions

TIMESTAMP_GRANULARITIES = ("segment", "word")
CHANNEL_MODES = ("mix", "split")
# Fields that change how the answer is delivered, not what it says.
_NOT_OUTPUT = frozenset({"stream", "use_cache"})


@dataclass(frozen=True)
class RequestOptions:
    model: str | None = None
    recognition: RecognitionOptions = field(default_factory=RecognitionOptions)
    response_format: str = "json"
    timestamp_granularities: tuple[str, ...] = ()
    # Server-Sent Events instead of one response (OpenAI's ``stream``).
    stream: bool = False
    # False: neither read nor write the result cache for this request.
    use_cache: bool = True
    # Speakers (None: the server's configured default). ``channels``: "mix" | "split".
    channels: str | None = None
    diarize: bool | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    # json/text: "[speaker] ..." lines instead of the plain text (form ``speaker_text``).
    speaker_text: bool = False

    def diarization_options(self) -> DiarizationOptions:
        return DiarizationOptions(self.num_speakers, self.min_speakers, self.max_speakers)

    @property
    def include_words(self) -> bool:
        return "word" in self.timestamp_granularities

    def output_fields(self) -> dict[str, Any]:
        """Every option that changes the output, as plain JSON-able values (cache key)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_OUTPUT}
        out["recognition"] = asdict(self.recognition)
        return out


def optional_str(value: object) -> str | None:
    if value is None or isinstance(value, UploadFile):
        return None
    text = str(value).strip()
    return text or None


def optional_bool(form: Mapping[str, Any], name: str) -> bool | None:
    """A form boolean (true/false/1/0/yes/no/on/off); None when absent; 400 otherwise."""
    text = optional_str(form.get(name))
    if text is None:
        return None
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidRequestError(f"{name} must be true or false, got {text!r}", param=name)


def optional_int(form: Mapping[str, Any], name: str, *, minimum: int = 1) -> int | None:
    text = optional_str(form.get(name))
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer, got {text!r}", param=name) from None
    if value < minimum:
        raise InvalidRequestError(f"{name} must be >= {minimum}", param=name)
    return value


def parse_form(
    form: Any, *, task: Literal["transcribe", "translate"] = "transcribe"
) -> RequestOptions:
    """The multipart form's fields (all but ``file``) -> :class:`RequestOptions`.

    ``form`` is Starlette's FormData (``get`` and ``getlist``). Raises
    :class:`InvalidRequestError` (a 400 naming the field) for a value it cannot accept.
    ``task``: ``translate`` for ``/v1/audio/translations`` (English text out).
    """
    response_format = str(form.get("response_format") or "json")
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequestError(
            f"response_format must be one of {list(RESPONSE_FORMATS)}", param="response_format"
        )
    granularities = [str(v) for v in form.getlist("timestamp_granularities[]")]
    granularities += [str(v) for v in form.getlist("timestamp_granularities")]
    unknown = set(granularities) - set(TIMESTAMP_GRANULARITIES)
    if unknown:
        raise InvalidRequestError(
            f"unknown timestamp_granularities {sorted(unknown)}",
            param="timestamp_granularities",
        )
    recognition = RecognitionOptions(
        language=optional_str(form.get("language")),
        prompt=optional_str(form.get("prompt")),
        hotwords=tuple(w for w in (optional_str(form.get("hotwords")) or "").split() if w.strip()),
        word_timestamps="word" in granularities,
        task=task,
        punctuate=optional_bool(form, "punctuate"),
    )
    channels = optional_str(form.get("channels"))
    if channels is not None and channels not in CHANNEL_MODES:
        raise InvalidRequestError(
            f"channels must be one of {list(CHANNEL_MODES)}, got {channels!r}", param="channels"
        )
    counts = DiarizationOptions(  # a 400 for inconsistent counts
        num_speakers=optional_int(form, "num_speakers"),
        min_speakers=optional_int(form, "min_speakers"),
        max_speakers=optional_int(form, "max_speakers"),
    )
    return RequestOptions(
        channels=channels,
        diarize=optional_bool(form, "diarize"),
        speaker_text=bool(optional_bool(form, "speaker_text")),
        num_speakers=counts.num_speakers,
        min_speakers=counts.min_speakers,
        max_speakers=counts.max_speakers,
        model=optional_str(form.get("model")),
        recognition=recognition,
        response_format=response_format,
        timestamp_granularities=tuple(dict.fromkeys(granularities)),
        stream=bool(optional_bool(form, "stream")),
        use_cache=optional_bool(form, "cache") is not False,
    )
