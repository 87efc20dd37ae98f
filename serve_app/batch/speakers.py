"""Speakers in the offline job: per-row options, diarization in the decode actor, labels.

The job's rows carry what the online request path computes per request:

- ``channels`` (manifest column, else ``channels.default`` of the job config): with
  ``split`` every channel's VAD segments are speech items of their own (``channel`` = the
  channel's index) and the recognize stage stitches each channel alone, labels its
  segments with the channel's name and merges them by start time.
- ``diarize`` (manifest column, else ``speakers.diarize_by_default``): the decode actor
  runs the pipeline's diarization steps (one ``embed_batch`` call per file); the speaker
  turns travel in the row (``turns``) and the recognize stage assigns them to the stitched
  segments as online (``serve_app.core.pipeline.assemble``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_app.config import ChannelSettings, SpeakerSettings
from serve_app.core.audio import DecodedAudio
from serve_app.core.errors import InvalidRequestError
from serve_app.core.speaker_request import (
    CHANNEL_MODES,
    SpeakerRequest,
)

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def row_speaker_request(
    row: dict, channels: ChannelSettings, speakers: SpeakerSettings | None
) -> SpeakerRequest:
    """A manifest row's ``channels`` / ``diarize`` over the job's defaults (400 on bad
    values, or when diarization is asked of a job without a ``speakers`` section)."""
    mode = str(row.get("channels") or "").strip() or channels.default
    if mode not in CHANNEL_MODES:
        raise InvalidRequestError(
            f"channels must be one of {list(CHANNEL_MODES)}, got {mode!r}", param="channels"
        )
    value: Any = row.get("diarize")
    if value is None or (isinstance(value, str) and not value.strip()):
        diarize = bool(speakers and speakers.diarize_by_default)
    elif isinstance(value, bool):
        diarize = value
    elif str(value).strip().lower() in _TRUE + _FALSE:
        diarize = str(value).strip().lower() in _TRUE
    else:
        raise InvalidRequestError(f"diarize must be true or false, got {value!r}", param="diarize")
    if diarize and speakers is None and mode != "split":
        raise InvalidRequestError(
            "diarization is not configured for this job (no 'speakers' section)", param="diarize"
        )
    return SpeakerRequest(channels="split" if mode == "split" else "mix", diarize=diarize)


def signals_of(
    audio: DecodedAudio, request: SpeakerRequest, channels: ChannelSettings
) -> list[np.ndarray]:
    """The signals to VAD and recognize: each channel (split) or the mix."""
    if request.channels != "split" or not audio.channels:
        return [audio.samples]
    if len(audio.channels) > channels.max_channels:
        raise InvalidRequestError(
            f"channels=split takes at most {channels.max_channels} channels, "
            f"the file has {len(audio.channels)}",
            param="channels",
        )
    return list(audio.channels)
