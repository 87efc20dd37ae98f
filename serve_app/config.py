"""One typed configuration for the whole application, validated once.

The Serve config files in ``ray_configs/`` point at ``serve_app.online.app:build_app`` and put an
``AppConfig`` under ``args``; Serve hands those args to the builder, which validates them
here (unknown keys are errors, not silently ignored) and gives each deployment only its own
part. The offline job loads the same model sections from a YAML file with
:func:`load_app_config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODELS_DIR = Path.home() / ".cache" / "ray-funasr-serve" / "models"
# Whisper's encoder input: every item is padded (or cut) to this many seconds.
WHISPER_WINDOW_S = 30.0


def resolve_models_dir(configured: str | None) -> Path:
    """Where relative model names are looked up: config, then $ASR_MODELS_DIR, then cache."""
    if configured:
        return Path(os.path.expandvars(configured)).expanduser()
    env = os.environ.get("ASR_MODELS_DIR")
    return Path(env) if env else DEFAULT_MODELS_DIR


class Strict(BaseModel):
    """Unknown keys are errors (a typo never passes silently); settings never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioSettings(Strict):
    """Input limits, enforced at the ingress before and after decoding."""

    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0)
    max_duration_s: float = Field(4 * 3600.0, gt=0)


class DeploymentSettings(Strict):
    """Ray Serve options of one deployment (the subset we let users set)."""

    num_replicas: int | Literal["auto"] | None = 1
    max_ongoing_requests: int | None = Field(None, gt=0)
    max_queued_requests: int | None = None
    autoscaling_config: dict[str, Any] | None = None
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    health_check_period_s: float | None = None
    # A stopping replica waits this long for its in-flight requests before it is killed
    # (Serve's default: 20 s), checking every wait_loop_s (2 s, paid by every stop).
    graceful_shutdown_timeout_s: float | None = Field(None, ge=0)
    graceful_shutdown_wait_loop_s: float | None = Field(None, gt=0)

    @field_validator("autoscaling_config")
    @classmethod
    def _check_autoscaling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Serve's own schema accepts unknown keys here; a typo would silently do nothing.
        if value is None:
            return None
        from ray.serve.config import AutoscalingConfig

        unknown = set(value) - set(AutoscalingConfig.model_fields)
        if unknown:
            raise ValueError(f"unknown autoscaling_config keys: {sorted(unknown)}")
        AutoscalingConfig(**value)
        return value

    @field_validator("ray_actor_options")
    @classmethod
    def _check_actor_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        allowed = {"num_cpus", "num_gpus", "memory", "resources", "runtime_env", "accelerator_type"}
        unknown = set(value) - allowed
        if unknown:
            raise ValueError(f"unknown ray_actor_options keys: {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> DeploymentSettings:
        if self.autoscaling_config is not None and isinstance(self.num_replicas, int):
            raise ValueError("set num_replicas to null or 'auto' when autoscaling_config is set")
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        return {k: v for k, v in self.model_dump().items() if v is not None and v != {}}


class VadSettings(Strict):
    """Speech detection (FSMN-VAD or Silero VAD) and the segment post-processing that
    prepares batchable pieces."""

    # fsmn: FunASR's FSMN-VAD (folder ``model``); silero: Silero VAD v6 as faster-whisper
    # ships and runs it (its own ONNX file inside the installed faster_whisper package).
    backend: Literal["fsmn", "silero"] = "fsmn"
    model: str = "fsmn-vad"
    device: str = "cpu"
    # FSMN-VAD's network through torch (FunASR's own model) or through ONNX Runtime over
    # the folder's model.onnx; FunASR's frontend and span logic are the same in both.
    fsmn_runtime: Literal["torch", "onnx"] = "torch"
    # FSMN-VAD's log-mel features: "batched" computes all frames of a 60 s chunk in a few
    # torch ops (serve_app.vad.kaldi_fbank: 3.5 -> 0.6 CPU-s per 30 min vs FunASR's
    # frame-by-frame kaldi-native-fbank; values within 2e-3, spans within 30 ms, tested);
    # "funasr" keeps FunASR's own fbank (spans identical to AutoModel.generate).
    fsmn_fbank: Literal["batched", "funasr"] = "batched"
    # torch / ONNX Runtime threads of the VAD process. Both VADs are small (FSMN 0.4 M
    # parameters) and gain nothing from more; FunASR's loader would otherwise set 4, which
    # on a shared node spins OpenMP threads against the recognizer's.
    cpu_threads: int = Field(1, ge=1)
    # Files one VAD replica analyses at once (more wait inside the replica). Each holds a
    # whole file's features: more at once adds memory, not speed, on 1-2 cores.
    concurrent_calls: int = Field(2, ge=1)
    # A pause at least this long ends a span: FSMN-VAD's max_end_silence_time, Silero's
    # min_silence_duration_ms. Set explicitly because FunASR 1.4's FSMN-VAD otherwise
    # applies a "dynamic" schedule that waits 2 s of silence for the first 60 s of a file
    # (45 s of read speech with 1.2 s pauses came back as one span) and then 0.1 s.
    end_silence_ms: int = Field(500, ge=100, le=6000)
    # FSMN-VAD: a frame is speech when P(speech) >= P(silence) + this (config.yaml: 0.6).
    fsmn_speech_noise_thres: float = Field(0.6, ge=-1.0, le=1.0)
    # Silero: speech probability above which a window is speech (its own default 0.5).
    silero_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    max_segment_s: float = Field(30.0, gt=0, le=60.0)
    # Neighbouring segments closer than this are merged while the result stays within
    # max_segment_s: fewer, fuller segments batch better and cut words less often.
    merge_gap_ms: int = Field(300, ge=0)
    # Segments shorter than this after merging are dropped as clicks and breaths.
    min_segment_ms: int = Field(200, ge=0)
    # Speech padding kept on each side of a segment (VAD boundaries are tight).
    pad_ms: int = Field(100, ge=0)
    # A segment still over max_segment_s is cut inside a pause: a run of 10 ms frames at
    # least pause_min_ms long, pause_depth_db below the segment's speech level (0: off,
    # cut at the quietest 50 ms window as before).
    pause_min_ms: int = Field(200, ge=0)
    pause_depth_db: float = Field(20.0, gt=0)


class BatchSettings(Strict):
    """Dynamic batching of segments across requests (``@serve.batch``)."""

    # Capacity of one dynamic batch, in seconds of audio (sum over items).
    max_batch_audio_s: float = Field(240.0, gt=0)
    # Item cap of one batch, enforced through the per-item minimum cost.
    max_batch_items: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    # Padded-cost budget of one forward pass inside a dynamic batch (longest x count).
    max_forward_audio_s: float = Field(240.0, gt=0)
    # A forward of live partials only (they never share one with file segments or
    # finals) holds at most this much (at least one item): a final that arrives meanwhile
    # waits for it. None: a quarter of max_batch_audio_s. On a CPU, where every item
    # adds its own time, one item (e.g. Whisper's 30 s window) keeps that wait short.
    background_batch_audio_s: float | None = Field(None, gt=0)
    # What one forward costs besides its padded audio, in audio seconds: the items of a
    # dynamic batch are split into forwards with the least padded seconds + this x forwards
    # (serve_app.core.batching.plan_batches). "auto": the backend's own figure (FunASR on
    # a CPU: 1.0 s, where padding is pure waste); null: fewest forwards, each filled up
    # to max_forward_audio_s (the GPU choice, and Whisper's, whose windows are all 30 s).
    forward_overhead_s: float | Literal["auto"] | None = "auto"

    @field_validator("forward_overhead_s")
    @classmethod
    def _overhead_not_negative(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float | int) and value < 0:
            raise ValueError("forward_overhead_s must be >= 0, 'auto' or null")
        return value


class PunctuationSettings(Strict):
    """A CT-Transformer punctuation stage after one recognizer (serve_app/punctuation/):
    its own batched deployment (items are text windows, capacity in tokens), CPU default."""

    # Folder (absolute or under models_dir) or hub id ("ct-punc": FunASR's
    # punc_ct-transformer_cn-en-common-vocab471067-large, from the hub or its cache).
    model: str = "ct-punc"
    device: Literal["cpu", "cuda"] = "cpu"
    cpu_threads: int = Field(1, ge=0)
    # Each window keeps the marks of core_tokens words and sees context_tokens more on
    # each side (across segment boundaries: whether a segment ends a sentence depends on
    # how the next one starts).
    core_tokens: int = Field(100, ge=1)
    context_tokens: int = Field(20, ge=0)
    # Capacity of one dynamic batch in tokens (sum over windows) and its item cap.
    max_batch_tokens: int = Field(4096, gt=0)
    max_batch_items: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    deployment: DeploymentSettings = DeploymentSettings(max_ongoing_requests=128)

    @property
    def max_window_tokens(self) -> int:
        return self.core_tokens + 2 * self.context_tokens

    @model_validator(mode="after")
    def _check(self) -> PunctuationSettings:
        if self.max_batch_tokens < self.max_window_tokens:
            # @serve.batch rejects an item larger than the whole batch capacity.
            raise ValueError(
                f"punctuation.max_batch_tokens ({self.max_batch_tokens}) must be >= "
                f"core_tokens + 2 x context_tokens ({self.max_window_tokens})"
            )
        return self


class StreamingSettings(Strict):
    """Live partials from a FunASR streaming model, the final from the recognizer: FunASR's
    "2pass" (serve_app/recognizers/funasr_streaming.py). Its own deployment, which keeps
    each session's states (routed by session); a state lost is rebuilt from the start."""

    # Folder (absolute or under models_dir) or hub id ("paraformer-zh-streaming").
    model: str = "paraformer-zh-streaming"
    device: Literal["cpu", "cuda"] = "cpu"
    cpu_threads: int = Field(1, ge=0)
    # FunASR's [0, 10, 5]: 600 ms chunks (10 encoder frames) with 300 ms of look-ahead.
    chunk_size: tuple[int, int, int] = (0, 10, 5)
    encoder_chunk_look_back: int = Field(4, ge=0)
    decoder_chunk_look_back: int = Field(1, ge=0)
    # A dynamic batch: audio seconds of new samples, items (they run one after another).
    max_batch_audio_s: float = Field(30.0, gt=0)
    max_batch_items: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    deployment: DeploymentSettings = DeploymentSettings(max_ongoing_requests=128)


class RecognizerSettings(Strict):
    """One served model: its backend, weights, precision, batching and replicas."""

    name: str = Field(..., description="model id clients send (the OpenAI 'model' field)")
    aliases: tuple[str, ...] = ()
    backend: Literal["funasr", "whisper", "moonshine"]
    model: str = Field(..., description="folder (absolute or under models_dir) or hub id")
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    # Live partials' forwards, cheaper (finals and files keep the model as configured):
    # Moonshine's encoder in int8 (half the time); Whisper's window in seconds (10: a third).
    partial_precision: Literal["fp32", "int8"] | None = None
    partial_window_s: float | None = Field(None, ge=5, le=30)
    # FunASR only: ``onnx`` runs FunASR's exported graph (cached under $ASR_ONNX_CACHE_DIR) on
    # ONNX Runtime, CPU, fp32 or int8: Paraformer, SenseVoiceSmall (recognizers/funasr_onnx.py).
    runtime: Literal["torch", "onnx"] = "torch"
    language: str | None = None
    hotwords: tuple[str, ...] = ()
    beam_size: int = Field(1, ge=1)
    # Intra-op threads on CPU. 0: the library default (in a Ray actor OMP_NUM_THREADS =
    # num_cpus, 1 for a fraction): set it to the cores the replica may use.
    cpu_threads: int = Field(0, ge=0)
    warmup: bool = True
    # Consecutive VAD segments of a file joined (pauses kept) into one item of up to this
    # many seconds: Whisper runs a 30 s window anyway (faster-whisper's batched pipeline
    # packs too); FunASR's cost grows with length. null: whisper 30, the others 0 (off).
    pack_segments_s: float | None = Field(None, ge=0)
    batch: BatchSettings = BatchSettings()
    # Admission (serve_app.online.admission): a request whose expected wait in this model's
    # queue, (queued + its own audio) / drain rate, is over this is answered 503 at once.
    max_queue_wait_s: float = Field(60.0, gt=0)
    # Drain rate (audio-s/s) assumed until one is measured: a cold start admits this x
    # max_queue_wait_s seconds of audio at once.
    initial_drain_rate_audio_s_per_s: float = Field(10.0, gt=0)
    deployment: DeploymentSettings = DeploymentSettings(max_ongoing_requests=64)
    # Punctuation after recognition (null: off), for FunASR models that do not punctuate
    # (Paraformer); Whisper is rejected, SenseVoice (its ITN punctuates) skipped with a warning.
    punctuation: PunctuationSettings | None = None
    # Live sessions' partial text from a FunASR streaming model (2pass; null: partials are
    # the utterance so far decoded again by this model, as low-priority items).
    streaming: StreamingSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> RecognizerSettings:
        if self.punctuation is not None and self.backend == "whisper":
            raise ValueError(
                f"{self.name}: punctuation is for models without their own; Whisper's text is "
                "already punctuated (remove the punctuation section)"
            )
        if self.partial_precision is not None and self.backend != "moonshine":
            raise ValueError(f"{self.name}: partial_precision is for the moonshine backend")
        if self.partial_window_s is not None and self.backend != "whisper":
            raise ValueError(f"{self.name}: partial_window_s is for the whisper backend")
        if self.precision in ("fp16", "bf16") and self.device == "cpu":
            raise ValueError(f"{self.name}: precision {self.precision} needs device cuda")
        if self.runtime == "onnx" and (self.backend != "funasr" or self.device != "cpu"):
            raise ValueError(f"{self.name}: runtime onnx is for the funasr backend on cpu")
        if self.precision == "int8" and self.backend == "funasr" and self.runtime != "onnx":
            raise ValueError(
                f"{self.name}: int8 is available for the whisper and moonshine backends and "
                "runtime onnx"
            )
        if self.backend == "whisper" and self.segment_pack_s > WHISPER_WINDOW_S:
            raise ValueError(
                f"{self.name}: pack_segments_s must be <= {WHISPER_WINDOW_S} (Whisper's window)"
            )
        if self.segment_pack_s > self.batch.max_batch_audio_s:
            raise ValueError(
                f"{self.name}: pack_segments_s ({self.segment_pack_s}) must be <= "
                f"batch.max_batch_audio_s ({self.batch.max_batch_audio_s})"
            )
        return self

    @property
    def segment_pack_s(self) -> float:
        """``pack_segments_s`` with the backend default applied (0 = no packing)."""
        if self.pack_segments_s is not None:
            return self.pack_segments_s
        return WHISPER_WINDOW_S if self.backend == "whisper" else 0.0

    @property
    def segment_pack_ms(self) -> int:
        return round(self.segment_pack_s * 1000)

    @property
    def redecode_rounds(self) -> int:
        """Coverage-check and re-decode rounds (serve_app.core.coverage): for packed items,
        which are decoded with timestamps (gaps and tails are found from them)."""
        return 2 if self.segment_pack_s > 0 else 0


class ChannelSettings(Strict):
    """Multi-channel files (``channels`` request option): ``mix`` averages the channels
    into one signal; ``split`` VADs and recognizes each channel on its own (a call
    recorder's agent and customer) and labels every segment with its channel's name."""

    # What a request that does not say gets (the form field / manifest column ``channels``).
    default: Literal["mix", "split"] = "mix"
    # Names of channels 1, 2, ... in split mode (``speaker`` of their segments); channels
    # beyond the list are ``channel_<n>``.
    names: tuple[str, ...] = ("left", "right")
    # A split request with more channels than this is a 400.
    max_channels: int = Field(2, ge=1, le=64)

    def name(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else f"channel_{index + 1}"


class SpeakerBatchSettings(Strict):
    """Cross-request batching of embedding windows (each window is one item)."""

    max_batch_audio_s: float = Field(96.0, gt=0)
    max_batch_items: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.02, ge=0)


class DiarizationSettings(Strict):
    """How speakers are found (serve_app.core.diarization): embedding windows, clustering,
    turns. Read by the online service and the offline job alike.

    The number of speakers comes from the windows' own structure (the eigengap of a
    nearest-neighbour graph, NME-SC), not from a distance threshold, so it does not hang
    on one encoder's or one voice set's scale; ``merge_centroid_distance`` is the one
    absolute distance left, a guard against one voice split in two.
    """

    window_s: float = Field(1.5, gt=0)
    hop_s: float = Field(0.75, gt=0)
    # A diarize request with more audio than this is refused (413 audio_too_long) before
    # any work: embedding costs GE2E 2-10 % of the audio's duration on one core, so two
    # hours are 2.5-12 CPU minutes on the speaker replica.
    max_audio_s: float = Field(2 * 3600.0, gt=0)
    # At most this many windows are clustered (spread evenly over the request); the rest
    # go to the nearest cluster centre. Clustering memory and time are quadratic in this
    # bound (1000: ~40 MB, well under a second), never in the request's length.
    max_cluster_windows: int = Field(1000, ge=2)
    # The neighbour graph's neighbour count is searched in this share of the windows.
    min_neighbour_share: float = Field(0.1, ge=0, le=1)
    max_neighbour_share: float = Field(0.25, gt=0, le=1)
    min_cluster_window_s: float = Field(0.6, ge=0)
    # Clusters whose centroids are closer than this (cosine distance) are one voice split
    # by window noise and are merged. GE2E centroids of one espeak-ng voice on different
    # sentences are 0.02-0.1 apart, of voices a listener tells apart 0.13-0.5.
    merge_centroid_distance: float = Field(0.12, ge=0, lt=2)
    # Without num_speakers, a cluster with less talk time than this is folded into its
    # nearest cluster (a spurious "speaker" made of a few odd windows).
    min_speaker_s: float = Field(2.0, ge=0)
    # ... and so is one with less than this share of the mean talk time per cluster (0:
    # off). The threshold clustering needed 0.35 against voices split by window noise; the
    # spectral count makes no such splits on the tuning voices, and the fold merged away
    # a real talker who speaks little (the held-out 3-talker probe, docs/BENCHMARKS.md).
    min_speaker_share: float = Field(0.0, ge=0, le=1)
    refine_passes: int = Field(3, ge=0)
    # Majority filter over this many neighbouring windows of a span (odd; 1 = off).
    smoothing_windows: int = Field(3, ge=1)
    # A turn shorter than this between two turns of the same span is given to a neighbour.
    min_turn_s: float = Field(0.5, ge=0)
    max_speakers: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _check_windows(self) -> DiarizationSettings:
        if not 0 < self.hop_s <= self.window_s:
            raise ValueError("need 0 < hop_s <= window_s")
        if self.smoothing_windows % 2 == 0:
            raise ValueError("smoothing_windows must be odd and >= 1")
        return self


class SpeakerSettings(DiarizationSettings):
    """Speaker embeddings for diarization (``diarize=true``), and how speakers are found
    (every :class:`DiarizationSettings` knob, at the same level). Without this section
    the service cannot diarize and a request that asks is a 400."""

    # ge2e: the real GE2E encoder (resemblyzer 0.1.4 weights, serve_app/tools/provision_models.py);
    # campplus: FunASR CAM++ (hub id ``cam++``, or a folder such as ``campplus-random``).
    backend: Literal["ge2e", "campplus"] = "ge2e"
    model: str = Field("ge2e-resemblyzer", description="folder (or under models_dir) or hub id")
    device: Literal["cpu", "cuda"] = "cpu"
    # Intra-op threads on CPU (0: the library default, Ray's OMP_NUM_THREADS = num_cpus).
    cpu_threads: int = Field(0, ge=0)
    warmup: bool = True
    # A request that does not send ``diarize`` gets this.
    diarize_by_default: bool = False
    batch: SpeakerBatchSettings = SpeakerBatchSettings()
    # Every window of every request is one call: 16 requests of a minute are ~1,300.
    deployment: DeploymentSettings = DeploymentSettings(max_ongoing_requests=256)

    @model_validator(mode="after")
    def _check(self) -> SpeakerSettings:
        if self.window_s > self.batch.max_batch_audio_s:
            raise ValueError("speakers: batch.max_batch_audio_s must be >= the window length")
        max_ongoing = self.deployment.max_ongoing_requests or 5
        if max_ongoing < self.batch.max_batch_items:
            raise ValueError(
                f"speakers: deployment.max_ongoing_requests ({max_ongoing}) must be >= "
                f"batch.max_batch_items ({self.batch.max_batch_items})"
            )
        return self


class RetrySettings(Strict):
    """Retries of a VAD or segment call whose replica died (serve_app.online.retry): exponential
    backoff with jitter, never past the request's deadline. Attempt ``n`` (from 1) waits
    ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))`` before the next one, scaled
    by a random factor in ``[1 - jitter, 1]`` so the retries of many requests do not arrive
    together."""

    max_attempts: int = Field(10, ge=1)
    initial_backoff_s: float = Field(0.2, gt=0)
    max_backoff_s: float = Field(5.0, gt=0)
    multiplier: float = Field(2.0, ge=1.0)
    jitter: float = Field(0.5, ge=0.0, le=1.0)

    def backoff_s(self, attempt: int, rand: float) -> float:
        """The wait after attempt ``attempt`` (from 1); ``rand`` is uniform in [0, 1)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1.0 - self.jitter * rand)


class RealtimeSettings(Strict):
    """Live sessions over websockets (serve_app.online.realtime): ``/v1/realtime`` (OpenAI's
    realtime transcription protocol) and ``/funasr`` (FunASR's runtime protocol)."""

    enabled: bool = True
    # The model a session gets when it names none (null: the ingress's default model).
    default_model: str | None = None
    # Sessions one ingress replica holds (each holds one of its max_ongoing_requests); one
    # more is refused (too_many_sessions, 1013).
    max_sessions: int = Field(32, gt=0)
    # A session with no client event for this long, and no decode waiting, is closed.
    idle_timeout_s: float = Field(120.0, gt=0)
    # Partial text while someone speaks: the utterance so far, every this many seconds of
    # audio, as a low-priority recognizer item (a newer one replaces a queued older one).
    partials: bool = True
    partial_interval_s: float = Field(0.8, gt=0, le=5)
    partial_timeout_s: float = Field(5.0, gt=0)
    # A turn's final decode starts after this much silence (>= 0.2 s, the end pad it keeps)
    # while the rest of silence_duration_ms is awaited (speech resumes: cancelled). 0: off.
    early_final_ms: int = Field(200, ge=0)
    # Turn detection: speech windows needed before a start counts (clicks are no turns),
    # and the longest turn (cut at its deepest pause: one utterance fits one batch item).
    min_speech_ms: int = Field(160, ge=32)
    max_turn_s: float = Field(28.0, ge=2, le=30)
    # Manual commits (turn_detection null): audio held before a commit.
    max_buffer_s: float = Field(300.0, gt=0)
    # One client message (OpenAI's limit: 15 MiB), events queued for a client that does not
    # read (then it is closed), utterances decoding at once per session (then it waits).
    max_event_bytes: int = Field(15 * 1024 * 1024, gt=0)
    max_queued_events: int = Field(1024, gt=0)
    max_pending_finals: int = Field(8, gt=0)


class IngressSettings(Strict):
    """The HTTP ingress (serve_app.online.ingress), which gets this section as it is."""

    default_model: str | None = None
    # Each request's deadline: this long after it arrives (a client may ask for less with
    # the X-Request-Timeout-S header, never more). Work of a request past its deadline is
    # dropped before it costs a forward pass; the request answers 504.
    request_timeout_s: float = Field(600.0, gt=0)
    # How long /healthz waits for the Serve controller's status, and /v1/models for a
    # model's capabilities (Kubernetes probes need a timeout above this).
    health_timeout_s: float = Field(5.0, gt=0)
    # A request whose stages (VAD, the model, speakers, punctuation) have had no running
    # replica this long is answered 503 naming the stage, with Retry-After, instead of
    # waiting for one (serve_app.online.availability); shorter waits are a replica restart.
    unavailable_after_s: float = Field(30.0, gt=0)
    retry: RetrySettings = RetrySettings()
    realtime: RealtimeSettings = RealtimeSettings()
    deployment: DeploymentSettings = DeploymentSettings(max_ongoing_requests=96)

    @model_validator(mode="after")
    def _room_for_requests(self) -> IngressSettings:
        cap = self.deployment.max_ongoing_requests
        if self.realtime.enabled and cap is not None and cap <= self.realtime.max_sessions:
            raise ValueError(
                f"ingress max_ongoing_requests ({cap}) must exceed realtime.max_sessions "
                f"({self.realtime.max_sessions}): every live session holds one request slot"
            )
        return self


class CacheSettings(Strict):
    """The result cache (serve_app/online/cache.py): a repeated upload with the same model and
    output options is answered without VAD or recognizer (header ``x-cache: hit``)."""

    enabled: bool = True
    # In-process LRU per ingress replica (keys + serialized transcriptions).
    max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # redis://host:port/db: one cache shared by every ingress replica (then max_bytes is
    # Redis's own maxmemory, not this).
    redis_url: str | None = None
    # Entry lifetime; null: until evicted.
    ttl_s: float | None = Field(None, gt=0)
    # Model name -> version string, instead of the computed one (weights' files + the
    # settings that change the output): set it where the weights are not on this machine.
    # The app builder hands the ingress this section with every served model's version
    # filled in (serve_app.online.app).
    model_versions: dict[str, str] = Field(default_factory=dict)


class AppConfig(Strict):
    """The whole application. ``ray_configs/*.yaml`` hold one under ``args``."""

    models_dir: str | None = None
    audio: AudioSettings = AudioSettings()
    vad: VadSettings = VadSettings()
    vad_deployment: DeploymentSettings = DeploymentSettings(max_ongoing_requests=8)
    ingress: IngressSettings = IngressSettings()
    cache: CacheSettings = CacheSettings()
    recognizers: tuple[RecognizerSettings, ...] = Field(..., min_length=1)
    channels: ChannelSettings = ChannelSettings()
    speakers: SpeakerSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> AppConfig:
        names: dict[str, str] = {}
        for rec in self.recognizers:
            for alias in (rec.name, *rec.aliases):
                if alias in names:
                    raise ValueError(f"model name {alias!r} used twice")
                names[alias] = rec.name
            if rec.backend == "whisper" and self.vad.max_segment_s > WHISPER_WINDOW_S:
                raise ValueError(
                    f"{rec.name}: vad.max_segment_s ({self.vad.max_segment_s}) must be <= "
                    f"{WHISPER_WINDOW_S} for a Whisper model (its window)"
                )
            if rec.batch.max_batch_audio_s < self.vad.max_segment_s:
                # @serve.batch rejects an item larger than the whole batch capacity.
                raise ValueError(
                    f"{rec.name}: batch.max_batch_audio_s ({rec.batch.max_batch_audio_s}) must "
                    f"be >= vad.max_segment_s ({self.vad.max_segment_s})"
                )
            max_ongoing = rec.deployment.max_ongoing_requests or 5
            if max_ongoing < rec.batch.max_batch_items:
                # A replica never holds more than max_ongoing_requests items, so no batch
                # can be larger; 2x lets the next batch fill while one runs.
                raise ValueError(
                    f"{rec.name}: deployment.max_ongoing_requests ({max_ongoing}) must be >= "
                    f"batch.max_batch_items ({rec.batch.max_batch_items}) or batches stay small"
                )
        if self.ingress.default_model and self.ingress.default_model not in names:
            raise ValueError(f"ingress.default_model {self.ingress.default_model!r} is not served")
        return self

    @property
    def default_model(self) -> str:
        return self.ingress.default_model or self.recognizers[0].name

    def model_names(self) -> dict[str, str]:
        """Every accepted name or alias -> the recognizer's canonical name."""
        out = {}
        for rec in self.recognizers:
            for alias in (rec.name, *rec.aliases):
                out[alias] = rec.name
        return out

    def recognizer(self, name: str) -> RecognizerSettings:
        for rec in self.recognizers:
            if rec.name == name:
                return rec
        raise KeyError(name)


def load_app_config(path: str | Path, *, app_name: str | None = None) -> AppConfig:
    """Load an ``AppConfig`` from a Serve config file (its app's ``args``) or a bare one."""
    raw = yaml.safe_load(Path(path).read_text())
    if isinstance(raw, dict) and "applications" in raw:
        apps = raw["applications"]
        if app_name is not None:
            apps = [a for a in apps if a.get("name") == app_name]
        if len(apps) != 1:
            raise ValueError(f"{path}: expected exactly one application, found {len(apps)}")
        raw = apps[0].get("args", {})
    return AppConfig.model_validate(raw)
