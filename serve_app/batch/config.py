"""Typed configuration of the offline bulk transcription job (``serve_app.batch.job``).

The job runs the same model sections as the online service (``audio``, ``vad``, one
``recognizer``: the classes from :mod:`serve_app.config`) plus the Ray Data pool settings
that only a batch job has. Job config files live in ``ray_configs/`` under a top-level
``job:`` key, which tells them apart from Serve configs (``applications:``).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, model_validator

from serve_app.config import (
    AudioSettings,
    ChannelSettings,
    RecognizerSettings,
    SpeakerSettings,
    Strict,
    VadSettings,
)


class ActorPoolSettings(Strict):
    """One Ray Data actor pool (``ActorPoolStrategy``) and each actor's resources."""

    min_size: int = Field(1, ge=1)
    max_size: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # Calls queued on one actor at once (null: Ray Data's default, 2 per actor). 1 hands
    # an actor its next call only when it is free, so at the end of a job no actor sits
    # idle while another still has a queued call (several actors, few large calls).
    max_tasks_in_flight_per_actor: int | None = Field(None, ge=1)
    # Fault tolerance: an actor whose process dies (SIGKILL, OOM killer, lost node) is
    # recreated up to ``max_restarts`` times (-1: always) and the batches it held are
    # resubmitted up to ``max_task_retries`` times (-1: always), so no row is lost. These
    # are Ray Data's own defaults, stated here so a config cannot drop them silently.
    max_restarts: int = Field(-1, ge=-1)
    max_task_retries: int = Field(-1, ge=-1)

    @model_validator(mode="after")
    def _check(self) -> ActorPoolSettings:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        if self.max_restarts == 0 and self.max_task_retries != 0:
            raise ValueError(
                "max_task_retries needs max_restarts != 0 (a dead actor never returns)"
            )
        return self


class JobConfig(Strict):
    """The whole offline job: model sections shared with Serve, plus Ray Data settings."""

    models_dir: str | None = None
    # Offline files are often far larger than an HTTP upload: set the limits for the corpus.
    audio: AudioSettings = AudioSettings(max_upload_bytes=2 * 1024**3, max_duration_s=4 * 3600.0)
    vad: VadSettings = VadSettings()
    recognizer: RecognizerSettings
    # Multi-channel files: the default of the manifest's ``channels`` column (mix | split),
    # channel names and maximum, as online.
    channels: ChannelSettings = ChannelSettings()
    # Diarization (manifest column ``diarize``, default ``speakers.diarize_by_default``):
    # each decode actor loads this encoder on its first diarized file. Its ``deployment``
    # and ``batch.batch_wait_timeout_s`` are not used offline. Absent: no diarization.
    speakers: SpeakerSettings | None = None
    # Decode + VAD actors (CPU). Each holds one FSMN-VAD model.
    decode_vad_pool: ActorPoolSettings = ActorPoolSettings(min_size=1, max_size=2)
    # Files per decode + VAD call: small, since one file's decoded audio can be large.
    files_per_decode_batch: int = Field(1, ge=1)
    # Recognizer actors; ``num_gpus: 1`` gives each actor a whole GPU.
    recognizer_pool: ActorPoolSettings = ActorPoolSettings()
    # Files whose segments meet in one recognizer call. Their segments are sorted by
    # duration and packed by padded cost across files, so more files -> less padding, at
    # the price of memory: all their speech audio is in the actor at once.
    files_per_recognizer_batch: int = Field(16, ge=1)
    # A file with more speech than this (seconds) is recognized as several rows of about
    # this much speech each, on whichever recognizer actors are free, and assembled into
    # its one output row (serve_app.batch.stages.AssembleStage). Without it a long file is one
    # recognizer call on one actor while the others may have nothing left to do. Parts
    # hold whole VAD pieces, so a part is never shorter than one piece. 0: off.
    part_speech_s: float = Field(0.0, ge=0)
    # Rows gathered before a part file is written (null: one file per finished batch).
    # Bigger means fewer files; a killed job redoes at most this many rows per writer.
    min_rows_per_output_file: int | None = Field(None, ge=1)
    # Ray Data blocks allowed to fail before the job aborts (their rows are not written
    # and are picked up by the next run). Per-file errors never fail a block.
    max_errored_blocks: int = Field(0, ge=-1)
    # Output order is irrelevant (rows carry their id); not preserving it keeps the
    # pipeline streaming instead of waiting on the slowest block.
    preserve_order: bool = False

    @model_validator(mode="after")
    def _check(self) -> JobConfig:
        if self.recognizer.device == "cuda" and self.recognizer_pool.num_gpus <= 0:
            raise ValueError("recognizer.device is cuda: set recognizer_pool.num_gpus > 0")
        if self.recognizer.device == "cpu" and self.recognizer_pool.num_gpus > 0:
            raise ValueError("recognizer_pool.num_gpus > 0 needs recognizer.device cuda")
        if self.vad.device != "cpu" and self.decode_vad_pool.num_gpus <= 0:
            raise ValueError(f"vad.device is {self.vad.device}: set decode_vad_pool.num_gpus")
        return self


def load_job_config(path: str | Path) -> JobConfig:
    """Load a :class:`JobConfig` from a YAML file holding it under a top-level ``job:`` key."""
    raw = yaml.safe_load(Path(path).read_text())
    if not isinstance(raw, dict) or set(raw) != {"job"}:
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: a job config holds exactly one top-level key 'job:' ({keys})")
    return JobConfig.model_validate(raw["job"])
