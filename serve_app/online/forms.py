"""What a client asked of one transcription request, parsed and checked once.

Two types, one per side of the parse:

- :class:`TranscriptionForm`: the multipart fields of ``/v1/audio/transcriptions`` (and
  ``/v1/audio/translations``) as the client sends them, typed and validated in one
  pydantic model. It is also what ``/openapi.json`` documents for those routes
  (:func:`openapi_request_body`), so the documentation cannot drift from the parser.
- :class:`RequestOptions`: the frozen options the ingress works with. Everything that can
  change the response lives here, so the result cache's key (:meth:`output_fields`) cannot
  forget an option: a new option is a new field, and it is part of the key unless it is
  listed in ``_NOT_OUTPUT``.

A value the form cannot accept is an :class:`InvalidRequestError` (a 400 naming the field).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from starlette.datastructures import UploadFile

from serve_app.core.diarization import DiarizationOptions
from serve_app.core.errors import InvalidRequestError
from serve_app.core.transcript import RESPONSE_FORMATS
from serve_app.core.types import RecognitionOptions

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["segment", "word"]
ChannelMode = Literal["mix", "split"]
TIMESTAMP_GRANULARITIES: tuple[str, ...] = get_args(Granularity)
CHANNEL_MODES: tuple[str, ...] = get_args(ChannelMode)
# The renderer owns the formats; the form's type must list the same ones.
assert set(get_args(ResponseFormat)) == set(RESPONSE_FORMATS), RESPONSE_FORMATS
# Fields that change how the answer is delivered, not what it says.
_NOT_OUTPUT = frozenset({"stream", "use_cache"})
# The granularities' form name as OpenAI's clients send it; the bare name is accepted too.
_GRANULARITIES_FIELD = "timestamp_granularities[]"


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


class _FieldError(ValueError):
    """A form value refused by a validator; ``param`` names the field in the 400."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def optional_str(value: object) -> str | None:
    """A text field: stripped, None when absent or blank (a file part is not text)."""
    if value is None or isinstance(value, UploadFile):
        return None
    text = str(value).strip()
    return text or None


def _flag(value: object, name: str) -> bool | None:
    text = optional_str(value)
    if text is None:
        return None
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise _FieldError(f"{name} must be true or false, got {text!r}", name)


def _count(value: object, name: str, minimum: int = 1) -> int | None:
    text = optional_str(value)
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        raise _FieldError(f"{name} must be an integer, got {text!r}", name) from None
    if number < minimum:
        raise _FieldError(f"{name} must be >= {minimum}", name)
    return number


def _as_request_error(exc: ValueError) -> InvalidRequestError:
    if isinstance(exc, _FieldError):
        return InvalidRequestError(str(exc), param=exc.param)
    return InvalidRequestError(str(exc))


def optional_bool(form: Mapping[str, Any], name: str) -> bool | None:
    """A form boolean (true/false/1/0/yes/no/on/off); None when absent; 400 otherwise."""
    try:
        return _flag(form.get(name), name)
    except _FieldError as exc:
        raise _as_request_error(exc) from None


def optional_int(form: Mapping[str, Any], name: str, *, minimum: int = 1) -> int | None:
    """A form integer >= ``minimum``; None when absent; 400 otherwise."""
    try:
        return _count(form.get(name), name, minimum)
    except _FieldError as exc:
        raise _as_request_error(exc) from None


class TranscriptionForm(BaseModel):
    """The form fields of an audio request, all but ``file`` (OpenAI's fields first, then
    this server's extensions). Unknown fields are ignored, as OpenAI clients send some
    (``temperature``) that this server does not use.

    Fields are validated in this order and the first refused one is the 400's ``param``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    response_format: ResponseFormat = Field(
        "json",
        description="json: {text}; verbose_json: with segments (and words); text, srt, vtt",
    )
    timestamp_granularities: tuple[Granularity, ...] = Field(
        (),
        alias=_GRANULARITIES_FIELD,
        description="'word' adds word timestamps (verbose_json); repeat the field for several",
    )
    language: str | None = Field(None, description="ISO 639-1 code; absent: detected")
    prompt: str | None = Field(None, description="Whisper: text that conditions the decoding")
    hotwords: str | None = Field(
        None, description="Words to favour, separated by spaces (extension)"
    )
    punctuate: bool | None = Field(
        None, description="false skips the punctuation stage where one is configured"
    )
    channels: ChannelMode | None = Field(
        None, description="Multi-channel audio: mix the channels, or recognize each one"
    )
    num_speakers: int | None = Field(None, ge=1, description="Diarization: exact speakers")
    min_speakers: int | None = Field(None, ge=1, description="Diarization: at least")
    max_speakers: int | None = Field(None, ge=1, description="Diarization: at most")
    diarize: bool | None = Field(
        None, description="Label segments by speaker (needs the server's speakers stage)"
    )
    speaker_text: bool = Field(False, description="json/text: '[speaker] ...' lines")
    model: str | None = Field(None, description="A served model or alias (GET /v1/models)")
    stream: bool = Field(False, description="Server-Sent Events: text deltas, then done")
    cache: bool = Field(True, description="false: neither read nor write the result cache")

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, value: object) -> str:
        text = str(value or "json")  # not stripped: the value must be one of the names
        if text not in RESPONSE_FORMATS:
            raise _FieldError(
                f"response_format must be one of {list(RESPONSE_FORMATS)}", "response_format"
            )
        return text

    @field_validator("timestamp_granularities", mode="before")
    @classmethod
    def _granularities(cls, value: object) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else list(value or ())  # type: ignore[call-overload]
        names = [str(v) for v in values]
        unknown = set(names) - set(TIMESTAMP_GRANULARITIES)
        if unknown:
            raise _FieldError(
                f"unknown timestamp_granularities {sorted(unknown)}", "timestamp_granularities"
            )
        return tuple(dict.fromkeys(names))

    @field_validator("language", "prompt", "hotwords", "model", mode="before")
    @classmethod
    def _text(cls, value: object) -> str | None:
        return optional_str(value)

    @field_validator("channels", mode="before")
    @classmethod
    def _channels(cls, value: object) -> str | None:
        text = optional_str(value)
        if text is not None and text not in CHANNEL_MODES:
            raise _FieldError(
                f"channels must be one of {list(CHANNEL_MODES)}, got {text!r}", "channels"
            )
        return text

    @field_validator("num_speakers", "min_speakers", "max_speakers", mode="before")
    @classmethod
    def _counts(cls, value: object, info: ValidationInfo) -> int | None:
        return _count(value, str(info.field_name))

    @field_validator("punctuate", "diarize", "speaker_text", "stream", "cache", mode="before")
    @classmethod
    def _flags(cls, value: object, info: ValidationInfo) -> bool | None:
        name = str(info.field_name)
        parsed = _flag(value, name)
        return cls.model_fields[name].default if parsed is None else parsed

    @classmethod
    def from_form(cls, form: Any) -> TranscriptionForm:
        """Starlette's FormData (``get``, ``getlist``) -> the typed form; 400 on a bad value."""
        values: dict[str, Any] = {
            name: form.get(name)
            for name in cls.model_fields
            if name != "timestamp_granularities" and form.get(name) is not None
        }
        values[_GRANULARITIES_FIELD] = [
            *form.getlist(_GRANULARITIES_FIELD),
            *form.getlist("timestamp_granularities"),
        ]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _validation_error(exc) from None

    def options(self, task: Literal["transcribe", "translate"]) -> RequestOptions:
        """The request's options; ``task``: ``translate`` for ``/v1/audio/translations``."""
        counts = DiarizationOptions(  # a 400 for inconsistent counts
            num_speakers=self.num_speakers,
            min_speakers=self.min_speakers,
            max_speakers=self.max_speakers,
        )
        recognition = RecognitionOptions(
            language=self.language,
            prompt=self.prompt,
            hotwords=tuple((self.hotwords or "").split()),
            word_timestamps="word" in self.timestamp_granularities,
            task=task,
            punctuate=self.punctuate,
        )
        return RequestOptions(
            channels=self.channels,
            diarize=self.diarize,
            speaker_text=self.speaker_text,
            num_speakers=counts.num_speakers,
            min_speakers=counts.min_speakers,
            max_speakers=counts.max_speakers,
            model=self.model,
            recognition=recognition,
            response_format=self.response_format,
            timestamp_granularities=self.timestamp_granularities,
            stream=self.stream,
            use_cache=self.cache,
        )


def _validation_error(exc: ValidationError) -> InvalidRequestError:
    """The first refused field as the 400 (our validators' own message and param)."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return _as_request_error(cause)
    param = str(first["loc"][0]) if first["loc"] else None
    return InvalidRequestError(f"{param}: {first['msg']}", param=param)


def parse_form(
    form: Any, *, task: Literal["transcribe", "translate"] = "transcribe"
) -> RequestOptions:
    """The multipart form's fields (all but ``file``) -> :class:`RequestOptions`.

    ``form`` is Starlette's FormData (``get`` and ``getlist``). Raises
    :class:`InvalidRequestError` (a 400 naming the field) for a value it cannot accept.
    ``task``: ``translate`` for ``/v1/audio/translations`` (English text out).
    """
    return TranscriptionForm.from_form(form).options(task)


def openapi_request_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of the audio routes: ``file`` and the typed form.

    The routes read the body themselves (serve_app.online.routes says why), so FastAPI
    cannot derive this from their signature; it comes from the same model that parses.
    """
    schema = TranscriptionForm.model_json_schema(by_alias=True, mode="validation")
    schema["description"] = (
        "OpenAI's multipart fields and this server's extensions; other fields are ignored."
    )
    schema["properties"] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The audio file (wav, flac, mp3, ogg/opus, m4a, webm, ...)",
        },
        **schema["properties"],
    }
    schema["required"] = ["file", *schema.get("required", [])]
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
