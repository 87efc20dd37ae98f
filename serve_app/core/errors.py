"""Typed errors of the ASR pipeline.

Errors carry a machine-readable ``code`` and a human message; they never know about HTTP.
``serve_app.online.http_errors`` is the one place that maps them to HTTP status
codes, and the offline job turns them into ``status=error`` rows.
"""

from __future__ import annotations


class AsrError(Exception):
    """Base of every error this package raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __reduce__(self):  # keep the type and fields across Ray's pickling
        return (_rebuild, (type(self), self.message, self.param))


def _rebuild(cls: type[AsrError], message: str, param: str | None) -> AsrError:
    return cls(message, param=param)


class InvalidRequestError(AsrError):
    """The request is malformed (missing field, bad parameter value)."""

    code = "invalid_request"


class InvalidAudioError(AsrError):
    """The bytes are not decodable audio, are truncated, or hold invalid samples."""

    code = "invalid_audio"


class UnsupportedCodecError(AsrError):
    """The container was recognised but its codec cannot be decoded here."""

    code = "unsupported_codec"


class UploadTooLargeError(AsrError):
    """The upload exceeds ``audio.max_upload_bytes``."""

    code = "upload_too_large"


class AudioTooLongError(AsrError):
    """The decoded audio exceeds ``audio.max_duration_s``."""

    code = "audio_too_long"


class UnknownModelError(AsrError):
    """No recognizer is served under the requested model name."""

    code = "model_not_found"


class OverloadedError(AsrError):
    """The service sheds load; the client should retry later (``Retry-After``)."""

    code = "overloaded"

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, param=param)
        # Raised and answered in the ingress; not kept across Ray's pickling (__reduce__).
        self.retry_after_s = retry_after_s


class TooManySessionsError(OverloadedError):
    """An ingress replica already holds its maximum of live sessions."""

    code = "too_many_sessions"


class UnauthorizedError(AsrError):
    """Missing or wrong API key (``Authorization: Bearer ...``)."""

    code = "invalid_api_key"


class PermissionDeniedError(AsrError):
    """A valid key that may not do this (an operator route called with a client key)."""

    code = "permission_denied"


class ModelUnavailableError(OverloadedError):
    """The model is served but none of its replicas is running (starting, or cannot be
    scheduled): a 503 naming it, at once, instead of a wait for the proxy's timeout."""

    code = "model_unavailable"


class DeadlineExceededError(AsrError):
    """The request's deadline passed before its work was done (it was dropped, not run)."""

    code = "deadline_exceeded"


class RecognitionError(AsrError):
    """The recognizer failed on an item (after batch splitting and retries)."""

    code = "recognition_failed"


class InternalError(AsrError):
    """A bug or an unexpected failure on our side."""

    code = "internal_error"
