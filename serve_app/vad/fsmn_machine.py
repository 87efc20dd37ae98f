"""FSMN-VAD's span decision, FunASR's state machine ported for whole files.

FunASR's ``FsmnVADStreaming`` turns the network's per-frame scores into speech spans with
a per-frame state machine written as bound methods over enums, a sample buffer and
``tensor[0][t][0].item()`` lookups: about a quarter of the VAD's CPU (3.6 of 13.8 s per
30 minutes of audio measured on one core). That cost is paid by every request online and
every file offline, on the CPU the recognizers need.

This module is the same machine over plain Python floats, for the case this project runs:
one whole file per call (``is_final``), the multiple-utterance detect mode, a fixed end
silence (no dynamic schedule). :class:`FrameCollector` stands in for the model's
``forward`` while FunASR's own ``inference`` drives the chunked frontend and encoder
(so features and scores are FunASR's, bit for bit); :func:`speech_flags` and
:func:`spans_ms` then make the decision in one pass. Runs of frames FunASR handles one
call at a time (``OnVoiceDetected`` for each frame of a run) are applied in O(1) with the
same result.

Faithfulness is tested, not assumed: ``tests/vad/test_fsmn_machine.py`` compares the spans
with FunASR's own ``AutoModel.generate`` on the same machine and audio (speech, noise,
pauses, files longer than one 60 s chunk and longer than ``max_single_segment_time``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_NOT_DETECTED, _IN_SPEECH, _END_DETECTED = 1, 2, 3
_SPEECH2SPEECH, _SPEECH2SIL, _SIL2SIL, _SIL2SPEECH = 0, 1, 2, 3


@dataclass(frozen=True)
class FsmnOptions:
    """The options of FunASR's ``VADXOptions`` the decision reads, in FunASR's units."""

    frame_ms: int
    frame_length_ms: int
    sample_rate_hz: int
    window_frames: int
    sil_to_speech_frames: int
    speech_to_sil_frames: int
    # FunASR's max_end_sil_frame_cnt_thresh: end silence minus speech_to_sil, in ms.
    end_silence_thresh_ms: int
    latency_frames: int  # window + lookback at a start point
    lookahead_end_frames: int
    do_extend: bool
    max_single_segment_ms: float
    max_start_silence_ms: float
    multiple_utterances: bool
    speech_noise_thres: float
    speech_2_noise_ratio: float
    snr_thres: float
    decibel_thres: float
    noise_frames: int
    sil_pdf_ids: tuple[int, ...]

    @classmethod
    def from_vad_opts(
        cls, opts: Any, *, end_silence_ms: int, speech_noise_thres: float
    ) -> FsmnOptions:
        """From a FunASR ``VADXOptions`` plus the two options this project passes per call
        (``max_end_silence_time``, ``speech_noise_thres``)."""
        frame_ms = int(opts.frame_in_ms)
        window_frames = int(opts.window_size_ms / frame_ms)
        latency = window_frames
        if opts.do_extend:
            latency += int(opts.lookback_time_start_point / frame_ms)
        sil_pdf_ids = tuple(int(i) for i in opts.sil_pdf_ids)
        if not sil_pdf_ids:
            raise ValueError("FSMN-VAD needs at least one silence pdf id")
        return cls(
            frame_ms=frame_ms,
            frame_length_ms=int(opts.frame_length_ms),
            sample_rate_hz=int(opts.sample_rate),
            window_frames=window_frames,
            sil_to_speech_frames=int(opts.sil_to_speech_time_thres / frame_ms),
            speech_to_sil_frames=int(opts.speech_to_sil_time_thres / frame_ms),
            end_silence_thresh_ms=int(end_silence_ms - opts.speech_to_sil_time_thres),
            latency_frames=latency,
            lookahead_end_frames=int(opts.lookahead_time_end_point / frame_ms),
            do_extend=bool(opts.do_extend),
            max_single_segment_ms=float(opts.max_single_segment_time),
            max_start_silence_ms=float(opts.max_start_silence_time),
            multiple_utterances=int(opts.detect_mode) == 1,
            speech_noise_thres=float(speech_noise_thres),
            speech_2_noise_ratio=float(opts.speech_2_noise_ratio),
            snr_thres=float(opts.snr_thres),
            decibel_thres=float(opts.decibel_thres),
            noise_frames=int(opts.noise_frame_num_used_for_snr),
            sil_pdf_ids=sil_pdf_ids,
        )


def frame_decibels(waveform: np.ndarray, num_frames: int, opts: FsmnOptions) -> list[float]:
    """FunASR's ``ComputeDecibel`` for one chunk: the energy of each 25 ms frame."""
    length = opts.frame_length_ms * opts.sample_rate_hz // 1000
    shift = opts.frame_ms * opts.sample_rate_hz // 1000
    expected = (num_frames - 1) * shift + length
    if waveform.shape[0] != expected:
        raise RuntimeError(
            "VAD score frames and waveform samples are not aligned: "
            f"expected {expected}, got {waveform.shape[0]}"
        )
    offsets = np.arange(0, waveform.shape[0] - length + 1, shift)
    frames = waveform[offsets[:, np.newaxis] + np.arange(length)]
    result: list[float] = (10 * np.log10(np.sum(np.square(frames), axis=1) + 0.000001)).tolist()
    return result


def speech_flags(
    sil_scores: Sequence[float], decibels: Sequence[float], opts: FsmnOptions
) -> list[bool]:
    """FunASR's ``GetFrameState`` for every frame: speech or silence.

    The same float operations in the same order (``math.exp(math.log(p))`` included), so a
    frame on the threshold falls the same way; the running noise level is the same
    exponential average over silence frames."""
    ratio = opts.speech_2_noise_ratio
    thres = opts.speech_noise_thres
    snr_thres = opts.snr_thres
    db_thres = opts.decibel_thres
    n = opts.noise_frames
    noise_db = -100.0
    log, exp = math.log, math.exp
    flags: list[bool] = []
    append = flags.append
    for sil, db in zip(sil_scores, decibels, strict=True):
        if db < db_thres:
            append(False)
            continue
        snr = db - noise_db
        if exp(log(1.0 - sil)) >= exp(log(sil) * ratio) + thres:
            append(snr >= snr_thres and db >= db_thres)
        else:
            append(False)
            noise_db = db if noise_db < -99.9 else (db + noise_db * (n - 1)) / n
    return flags


def spans_ms(speech: Sequence[bool], opts: FsmnOptions, *, final: bool) -> list[tuple[int, int]]:
    """FunASR's ``DetectOneFrame`` over all frames of a file, then its offline output.

    ``final``: the last frame is the file's end (FunASR's ``DetectLastFrames`` ran on it);
    then an open segment ends there and is returned; otherwise only closed segments are
    (FunASR returns nothing for a final chunk without frames).

    The names follow FunASR's ``Stats``: ``buf_start`` is ``data_buf_start_frame`` (a
    start point is never before it), ``last_speech`` / ``last_sil`` are the latest
    confirmed speech / silence frames, ``sil_run`` the continuous silence count.
    """
    ms = opts.frame_ms
    win = opts.window_frames
    to_speech = opts.sil_to_speech_frames
    to_sil = opts.speech_to_sil_frames
    latency = opts.latency_frames
    lookahead = opts.lookahead_end_frames
    end_thresh_ms = opts.end_silence_thresh_ms
    max_seg_frames = opts.max_single_segment_ms / ms
    do_extend = opts.do_extend
    last_index = len(speech) - 1

    ring = [0] * win
    pos = win_sum = 0
    pre_speech = False
    buf_start = 0
    last_speech, last_sil, sil_run = 0, -1, 0
    state = _NOT_DETECTED
    start_frame = end_frame = -1
    ends_detected = 0
    # [start_ms, end_ms, has_end_point]
    segments: list[list[Any]] = []

    def voice_run(first: int, stop: int) -> None:
        """OnVoiceDetected for frames first .. stop-1 (nothing when empty)."""
        nonlocal last_speech, buf_start
        if first >= stop:
            return
        if not segments:  # FunASR opens a segment here; unreachable in practice
            segments.append([first * ms, first * ms, False])
        last_speech = stop - 1
        buf_start = max(buf_start, first) + (stop - first)
        segments[-1][1] = stop * ms

    def voice_end(frame: int, *, fake: bool) -> None:
        """OnVoiceEnd(frame)."""
        nonlocal end_frame, buf_start, ends_detected
        voice_run(last_speech + 1, frame)
        if end_frame == -1:
            end_frame = frame
        if not fake:
            if not segments:
                segments.append([end_frame * ms, end_frame * ms, False])
            buf_start = max(buf_start, end_frame) + 1
            segments[-1][1] = (end_frame + 1) * ms
            segments[-1][2] = True
        ends_detected += 1

    for t, is_speech in enumerate(speech):
        is_final_frame = final and t == last_index
        # WindowDetector.DetectOneFrame
        cur = 1 if is_speech else 0
        win_sum += cur - ring[pos]
        ring[pos] = cur
        pos = (pos + 1) % win
        if not pre_speech and win_sum >= to_speech:
            pre_speech = True
            change = _SIL2SPEECH
        elif pre_speech and win_sum <= to_sil:
            pre_speech = False
            change = _SPEECH2SIL
        else:
            change = _SPEECH2SPEECH if pre_speech else _SIL2SIL

        if change == _SIL2SIL:
            sil_run += 1
            if state == _NOT_DETECTED:
                if (not opts.multiple_utterances and sil_run * ms > opts.max_start_silence_ms) or (
                    is_final_frame and ends_detected == 0
                ):
                    # Silence to the end (or timeout): FunASR's zero-length "fake" result.
                    if last_sil + 1 < t:
                        last_sil = t - 1
                        buf_start = max(buf_start, t - 1)
                    if start_frame == -1:
                        start_frame = 0
                    voice_end(0, fake=True)
                    state = _END_DETECTED
                elif t >= latency:
                    last_sil = t - latency
                    buf_start = max(buf_start, t - latency)
            elif state == _IN_SPEECH:
                if sil_run * ms >= end_thresh_ms:
                    lookback = int(end_thresh_ms / ms)
                    if do_extend:
                        lookback = max(0, lookback - lookahead - 1)
                    voice_end(t - lookback, fake=False)
                    state = _END_DETECTED
                elif t - start_frame + 1 > max_seg_frames:
                    voice_end(t, fake=False)
                    state = _END_DETECTED
                elif do_extend and not is_final_frame:
                    if sil_run <= lookahead:
                        voice_run(t, t + 1)
                elif is_final_frame:
                    voice_end(t, fake=False)
                    state = _END_DETECTED
        else:
            if change == _SIL2SPEECH:
                sil_run = 0
                if state == _NOT_DETECTED:
                    first = max(buf_start, t - latency)
                    if start_frame == -1:
                        start_frame = first
                    # PopDataToOutputBuf(start, 1, first_frm_is_start_point=True)
                    buf_start = max(buf_start, start_frame) + 1
                    segments.append([start_frame * ms, (start_frame + 1) * ms, False])
                    state = _IN_SPEECH
                    voice_run(first + 1, t + 1)
                    continue_in_speech = False
                else:
                    if state == _IN_SPEECH:
                        voice_run(last_speech + 1, t)
                    continue_in_speech = state == _IN_SPEECH
            else:  # SPEECH2SIL, SPEECH2SPEECH
                sil_run = 0
                continue_in_speech = state == _IN_SPEECH
            if continue_in_speech:
                if t - start_frame + 1 > max_seg_frames:
                    voice_end(t, fake=False)
                    state = _END_DETECTED
                elif not is_final_frame:
                    voice_run(t, t + 1)
                else:
                    voice_end(t, fake=False)
                    state = _END_DETECTED

        if state == _END_DETECTED:
            if not opts.multiple_utterances:
                break  # single-utterance mode: FunASR decides nothing more
            # ResetDetection
            sil_run, last_speech, last_sil = 0, 0, -1
            start_frame = end_frame = -1
            state = _NOT_DETECTED
            ring = [0] * win
            pos = win_sum = 0
            pre_speech = False

    return [(s, e) for s, e, closed in segments if final or closed]


class FrameCollector:
    """Stands in for ``FsmnVADStreaming.forward`` on one model instance.

    FunASR's ``inference`` keeps driving the chunked frontend (60 s chunks with its
    caches) and calls ``forward`` per chunk; this keeps each chunk's silence scores (from
    the model's own encoder, torch or ONNX) and frame energies and returns no segments;
    :meth:`spans_ms` makes the whole file's decision afterwards. Not thread-safe: the
    caller serialises calls (FunASR's model already needs that).
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._sil: list[float] = []
        self._decibels: list[float] = []
        self._final = False
        self._frame_opts: FsmnOptions | None = None
        model.forward = self.forward  # instance attribute: inference() calls self.forward

    def reset(self) -> None:
        self._sil, self._decibels, self._final = [], [], False

    def forward(self, feats: Any, waveform: Any, cache: dict, is_final: bool = False, **_: Any):
        if feats.numel() == 0:
            return []
        num_frames = int(feats.shape[1])
        opts = self._model.vad_opts
        scores = self._model.encoder(feats, cache=cache["encoder"])
        if scores.shape[1] != num_frames:
            raise RuntimeError("FSMN-VAD scores and features differ in length")
        ids = [int(i) for i in opts.sil_pdf_ids]
        rows = scores[0].detach().cpu()
        if len(ids) == 1:
            self._sil += rows[:, ids[0]].tolist()
        else:  # FunASR sums the .item() floats in this order
            self._sil += [sum(row) for row in rows[:, ids].tolist()]
        if self._frame_opts is None:  # only the frame geometry is read: build it once
            self._frame_opts = FsmnOptions.from_vad_opts(
                opts, end_silence_ms=0, speech_noise_thres=0.0
            )
        wave = waveform[0].detach().cpu().numpy()
        self._decibels += frame_decibels(wave, num_frames, self._frame_opts)
        self._final = bool(is_final)
        return []

    def spans_ms(self, opts: FsmnOptions) -> list[tuple[int, int]]:
        flags = speech_flags(self._sil, self._decibels, opts)
        return spans_ms(flags, opts, final=self._final)
