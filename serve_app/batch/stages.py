"""The stages of the offline bulk job, as plain classes (no Ray imports).

``serve_app.batch.job`` strings them together with Ray Data::

    manifest rows -> DecodeVadStage (CPU actors) -> RecognizeStage (CPU/GPU actors)
                  [-> AssembleStage (one actor, when long files are split)] -> Parquet

Both stages run the per-file pipeline of the online service (``serve_app.core.pipeline``)
with the offline driver: :func:`~serve_app.core.pipeline.run_lockstep` steps every file
of a block together and :class:`~serve_app.core.pipeline.BlockExecutor` turns each round's
calls of one kind into ONE call of the actor's plain class. :class:`DecodeVadStage` reads
and decodes a file, runs the same :class:`~serve_app.vad.detectors.FsmnVad` as the Serve VAD
deployment, packs its segments as the online route does, diarizes it when asked, and puts
the file's speech items *inside its row* (``speech``). :class:`RecognizeStage` receives a
block of such rows and runs the pipeline's recognition steps over all of them: the same
:class:`~serve_app.recognizers.base.BatchedRecognizer` as the Serve recognizer sees every
item of every file of the block at once (sorted by duration, packed by padded cost,
across files), then re-decoding, language, stitching, punctuation and speakers exactly as
online.

Why not one row per segment followed by ``groupby(id)``: a groupby is an all-to-all
exchange. Ray Data cannot emit any group before it has seen every row of the dataset, so
nothing would be written until the last segment of the whole manifest is recognised, all
segment results would be held (or spilled) at once, and a crash would lose everything.
Keeping a file's segments in its row makes every stage a streaming map: memory stays
bounded by the blocks in flight, finished files are written while later ones are still
decoding, and a killed job keeps what it wrote.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from serve_app.batch.parts import AssembleStage, merge_parts, split_row, split_speech
from serve_app.batch.rows import (
    DECODED_SCHEMA,
    OUTPUT_SCHEMA,
    PART_OUTPUT_SCHEMA,
    READ_ATTEMPTS,
    READ_BACKOFF_S,
    STATUS_ERROR,
    STATUS_OK,
    decoded_error_row,
    error_text,
    items_of_row,
    normalize_hotwords,
    normalize_language,
    options_for,
    resolve_audio_ref,
    speech_column,
    table_from_rows,
)
from serve_app.batch.speakers import row_speaker_request, signals_of
from serve_app.config import (
    AudioSettings,
    ChannelSettings,
    RecognizerSettings,
    SpeakerSettings,
    VadSettings,
    resolve_models_dir,
)
from serve_app.core.audio import decode_audio, read_audio_bytes
from serve_app.core.diarization import Diarization, DiarizationOptions, SpeakerTurn, talk_time_s
from serve_app.core.errors import AsrError, InvalidAudioError, InvalidRequestError
from serve_app.core.pipeline import (
    BlockExecutor,
    FileText,
    Route,
    Steps,
    assemble,
    diarize_signal,
    gather,
    recognize_signal,
    run_lockstep,
    speech_items,
)
from serve_app.core.segmentation import SpeechSegment, pack_pieces
from serve_app.core.types import ItemResult, RecognitionOptions, SegmentJob
from serve_app.punctuation.stage import build_punctuator, punctuation_for
from serve_app.speakers.base import BatchedEmbedder

logger = logging.getLogger(__name__)

__all__ = [  # the job's row helpers, importable from the stages as before
    "DECODED_SCHEMA",
    "OUTPUT_SCHEMA",
    "PART_OUTPUT_SCHEMA",
    "AssembleStage",
    "DecodeVadStage",
    "RecognizeStage",
    "error_text",
    "merge_parts",
    "normalize_hotwords",
    "normalize_language",
    "recognize_rows",
    "resolve_audio_ref",
    "split_row",
    "split_speech",
    "table_from_rows",
]


# -- stage 1: read + decode + VAD (+ diarization) ----------------------------------------


class SegmentsFn(Protocol):
    def segments(self, samples: np.ndarray) -> list[SpeechSegment]: ...


class DecodeVadStage:
    """Manifest rows -> rows with the file's speech segments (one actor holds one VAD).

    Called by Ray Data with a ``pyarrow.Table`` of manifest rows; returns a table in
    :data:`DECODED_SCHEMA`. Never raises for a bad file: it becomes an error row.
    """

    def __init__(
        self,
        audio: AudioSettings,
        vad: VadSettings,
        models_dir: str | None = None,
        *,
        base_dir: str | None = None,
        segmenter: SegmentsFn | None = None,
        pack_segments_s: float = 0.0,
        channels: ChannelSettings | None = None,
        speakers: SpeakerSettings | None = None,
        embedder: BatchedEmbedder | None = None,
        part_speech_s: float = 0.0,
    ) -> None:
        # Files with more speech than this are emitted as several rows (split_row), so
        # that one long file's recognition spreads over the recognizer actors; 0: never.
        self._part_speech_s = part_speech_s
        # Speakers (serve_app.batch.speakers): the channel layout, and the encoder that
        # diarizes files asking for it (loaded on the first such file).
        self._channels = channels or ChannelSettings()
        self._speakers = speakers
        self._embedder = embedder
        self._models_dir = models_dir
        self._limits = audio
        self._base_dir = base_dir
        self._pack_ms = round(pack_segments_s * 1000)  # as the online route does
        if segmenter is None:
            from serve_app.vad.detectors import FsmnVad

            vad_model = FsmnVad(vad, models_dir=resolve_models_dir(models_dir))
            vad_model.warmup()  # model load and first run here, once per actor
            segmenter = vad_model
        self._vad = segmenter

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [
            part
            for row in batch.to_pylist()
            for part in split_row(self.process(row), self._part_speech_s)
        ]
        return table_from_rows(rows, DECODED_SCHEMA)

    def process(self, row: dict) -> dict:
        row_id = str(row["id"])
        duration_s = None
        try:
            ref = row.get("audio")
            if not ref or not str(ref).strip():
                raise InvalidRequestError("the manifest row has no audio path", param="audio")
            request = row_speaker_request(row, self._channels, self._speakers)
            data = self._read(resolve_audio_ref(str(ref).strip(), self._base_dir))
            audio = decode_audio(data, self._limits, keep_channels=request.channels == "split")
            del data
            duration_s = audio.duration_s
            if len(audio.samples) == 0:
                raise InvalidAudioError("no samples: the audio is empty")
            signals = signals_of(audio, request, self._channels)
            speech: list[dict] = []
            turns = None
            for channel, samples in enumerate(signals):
                vad_segments = self._vad.segments(samples)
                pieces = pack_pieces(vad_segments, max_piece_ms=self._pack_ms, samples=samples)
                speech += speech_column(speech_items(samples, pieces), channel)
                if request.diarize and request.channels != "split":
                    turns = self._diarize(samples, vad_segments)
            split = request.channels == "split"
            return {
                "id": row_id,
                "language": normalize_language(row.get("language")),
                "hotwords": normalize_hotwords(row.get("hotwords")),
                "duration_s": duration_s,
                "status": STATUS_OK,
                "error": None,
                "speech": speech,
                "channel_names": [self._channels.name(i) for i in range(len(signals))]
                if split
                else [],
                "turns": turns,
            }
        except Exception as exc:  # one bad file must not fail its block
            if not isinstance(exc, AsrError):
                logger.warning("file %s failed: %r", row_id, exc)
            return decoded_error_row(row_id, exc, duration_s)

    def _diarize(self, samples: np.ndarray, vad_segments: list[SpeechSegment]) -> list[dict]:
        """The file's speaker turns, by the pipeline's diarization steps: every window of
        the file in ONE ``embed_batch`` call (the encoder is loaded on the first file)."""
        assert self._speakers is not None  # row_speaker_request refused the row otherwise
        if self._embedder is None:
            from serve_app.speakers.factory import build_batched_embedder

            self._embedder = build_batched_embedder(
                self._speakers, resolve_models_dir(self._models_dir)
            )
        step = diarize_signal(samples, vad_segments, DiarizationOptions(), self._speakers)
        (diarization,) = run_lockstep([step], BlockExecutor(embed_batch=self._embedder.embed_batch))
        if isinstance(diarization, BaseException):
            raise diarization
        return [
            {"start_s": t.start_s, "end_s": t.end_s, "speaker": t.speaker}
            for t in diarization.turns
        ]

    def _read(self, uri: str) -> bytes:
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return read_audio_bytes(uri, max_bytes=self._limits.max_upload_bytes)
            except AsrError:
                raise  # missing, too large: retrying cannot help
            except OSError as exc:
                if attempt == READ_ATTEMPTS:
                    raise
                logger.warning("reading %s failed (%r); retry %d", uri, exc, attempt)
                time.sleep(READ_BACKOFF_S * attempt)
        raise AssertionError("unreachable")


# -- stage 2: recognize + stitch + punctuate + speakers ---------------------------------


class TranscribeBatchFn(Protocol):
    def transcribe_batch(self, jobs: Sequence[SegmentJob]) -> list[ItemResult]: ...


class PunctuateBatchFn(Protocol):
    def punctuate(self, requests: Sequence[Sequence[str]]) -> list[list[str] | AsrError]: ...


def recognize_rows(
    batch: pa.Table,
    recognizer: TranscribeBatchFn,
    *,
    model_name: str,
    default_options: RecognitionOptions,
    redecode_rounds: int = 0,
    punctuator: PunctuateBatchFn | None = None,
    detects_language: bool = False,
) -> list[dict]:
    """Decoded rows -> output rows, through the online service's pipeline steps.

    Every file of the block is stepped together: the first pass of every item of every
    ok file goes to ONE ``transcribe_batch`` (language probes ride in the same batches),
    each re-decode round of the block is one more call, and the block's punctuation is one
    ``punctuate`` call. A file whose step fails (a failed item, a failed punctuation)
    becomes an error row; error rows pass through (with the model name added).
    """
    route = Route(
        model_name,
        redecode_rounds=redecode_rounds,
        detects_language=detects_language,
        punctuates=punctuator is not None,
    )
    meta = batch.drop_columns(["speech"]).to_pylist()
    speech = batch.column("speech")
    steps: list[Steps[FileText]] = []
    for i, row in enumerate(meta):
        if row["status"] == STATUS_OK:
            names = row.get("channel_names") or []
            options = options_for(default_options, row["language"], row["hotwords"] or ())
            steps.append(
                _file_steps(items_of_row(speech[i], len(names)), names, row, route, options)
            )
    executor = BlockExecutor(
        recognizer.transcribe_batch,
        punctuate=punctuator.punctuate if punctuator is not None else None,
    )
    done = iter(run_lockstep(steps, executor))
    out = []
    for row in meta:
        base = {
            "id": row["id"],
            "duration_s": row["duration_s"],
            "model": model_name,
            # A part of a long file (split_row) says which, for AssembleStage.
            **({"part": row["part"], "parts": row["parts"]} if row.get("parts") else {}),
        }
        result = next(done) if row["status"] == STATUS_OK else row["error"]
        if not isinstance(result, FileText):
            error = result if isinstance(result, str) else error_text(result)
            out.append(
                {**base, "text": None, "segments": None, "status": STATUS_ERROR, "error": error}
            )
            continue
        out.append(
            {
                **base,
                **_output_columns(result, speakers=bool(result.talk_time_s)),
            }
        )
    return out


def _file_steps(
    signals: list[list],
    names: Sequence[str],
    row: dict,
    route: Route,
    options: RecognitionOptions,
) -> Steps[FileText]:
    texts = yield from gather([recognize_signal(items, route, options) for items in signals])
    turns = row.get("turns")
    diarization = None
    if turns is not None:
        turned = tuple(SpeakerTurn(t["start_s"], t["end_s"], t["speaker"]) for t in turns)
        diarization = Diarization(turns=turned, talk_time_s=talk_time_s(turned))
    return assemble(texts, channel_names=names, diarization=diarization)


def _output_columns(result: FileText, *, speakers: bool) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "text": result.text,
        "segments": [
            {"start_s": s.start_s, "end_s": s.end_s, "text": s.text}
            | ({"speaker": s.speaker} if s.speaker is not None else {})
            for s in result.segments
        ],
        "status": STATUS_OK,
        "error": None,
    }
    if speakers:  # only files with speakers carry them (segments' "speaker" too)
        columns["speakers"] = [
            {"speaker": k, "talk_time_s": v} for k, v in result.talk_time_s.items()
        ]
    return columns


class RecognizeStage:
    """Decoded rows -> output rows; one actor loads (and warms) one recognizer, once."""

    def __init__(
        self,
        settings: RecognizerSettings,
        models_dir: str | None = None,
        *,
        recognizer: TranscribeBatchFn | None = None,
        punctuator: PunctuateBatchFn | None = None,
        keep_parts: bool = False,
    ) -> None:
        # With files in parts, rows keep their part index for AssembleStage.
        self._schema = PART_OUTPUT_SCHEMA if keep_parts else OUTPUT_SCHEMA
        # The recognizer's punctuation stage, the same plain object the online deployment
        # runs (none for models that punctuate themselves; see serve_app.punctuation.stage).
        if punctuator is None and (
            punctuation := punctuation_for(settings, resolve_models_dir(models_dir))
        ):
            punctuator = build_punctuator(punctuation, resolve_models_dir(models_dir))
        self._punctuator = punctuator
        if recognizer is None:
            from serve_app.recognizers.factory import build_recognizer

            recognizer = build_recognizer(settings, resolve_models_dir(models_dir))
        self._recognizer = recognizer
        # As online: a file without a language is detected once (serve_app.core.language).
        capabilities = getattr(recognizer, "capabilities", None)
        self._detects_language = bool(
            capabilities is not None and capabilities().language_detection
        )
        self._model_name = settings.name
        # As the online route: which items are checked and re-decoded.
        self._redecode_rounds = settings.redecode_rounds
        self._default_options = RecognitionOptions(
            language=settings.language, hotwords=settings.hotwords
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = recognize_rows(
            batch,
            self._recognizer,
            model_name=self._model_name,
            default_options=self._default_options,
            redecode_rounds=self._redecode_rounds,
            punctuator=self._punctuator,
            detects_language=self._detects_language,
        )
        stats = getattr(self._recognizer, "last_stats", None)
        if stats is not None and stats.num_items:
            logger.debug(
                "%d files, %d segments, %d forward passes, padding efficiency %.2f",
                batch.num_rows,
                stats.num_items,
                stats.num_forward_passes,
                stats.padding_efficiency,
            )
        return table_from_rows(rows, self._schema)
