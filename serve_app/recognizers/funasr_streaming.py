"""FunASR's streaming Paraformer (``paraformer-zh-streaming``) for live partials: 2pass.

FunASR's own live server runs two models per session ("2pass"): a streaming Paraformer
turns every 600 ms chunk into text at once, with a cache that carries the chunked
encoder's look-back, the CIF predictor's remainder, the decoder's memory and the online
frontend's fbank tail from chunk to chunk; when the speaker pauses, the offline model
decodes the whole utterance again for the final text. Here the final is the recognizer's
(an item of its cross-request batches, as for files) and the partials come from this
class, when a recognizer's ``streaming`` section names a streaming model.

:class:`FunAsrStreamingRecognizer` is plain (no Ray): :meth:`run` takes
:class:`StreamChunk` items (an utterance's :class:`StreamState` and the samples that came
since) and returns each utterance's next state, its text grown by what the new whole
chunks say; samples short of a chunk wait in the state for the next call. The input state
is never changed (a copy is advanced), so a call that fails or times out leaves the
caller's state as it was and the same audio is fed again next time. FunASR's streaming
model takes one cache per call: the items of a batch run one after another (no padded
forward across sessions, unlike the recognizer's).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.core.audio import SAMPLE_RATE_HZ
from serve_app.core.text import join_tokens
from serve_app.recognizers.funasr_loader import load_funasr_model

logger = logging.getLogger(__name__)

# FunASR's defaults for paraformer-zh-streaming: 600 ms chunks (10 encoder frames of 60 ms)
# with 300 ms of look-ahead, 4 chunks of encoder look-back, 1 of decoder look-back.
CHUNK_SIZE = (0, 10, 5)
SAMPLES_PER_FRAME = 960  # one 60 ms encoder frame (LFR 6 x 10 ms) at 16 kHz


@dataclass
class StreamState:
    """One utterance's place in the streaming model: FunASR's cache, how many of the
    utterance's samples it has been fed, and the text so far."""

    cache: dict[str, Any] = field(default_factory=dict)
    fed_samples: int = 0
    text: str = ""


@dataclass(frozen=True)
class StreamChunk:
    """The samples of an utterance after ``state.fed_samples``, to advance ``state``."""

    state: StreamState
    samples: np.ndarray
    deadline_unix_s: float | None = None
    request_id: str = ""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


class SessionStreams:
    """The streaming states of one live session's utterances, kept where its partials
    are decoded (the state is ~13 MB for Paraformer-large: the encoder's look-back), so a
    call carries only the new samples. :meth:`state_for` hands out an utterance's state
    only when the caller's ``start_sample`` is where that state stands, a new state for
    ``start_sample == 0``, else None: the state is not here (another replica, a restart,
    an eviction) or is not where the caller thinks, and the caller sends the utterance
    from its start again. An utterance ended while its last call ran is not kept."""

    def __init__(self, remember_ended: int = 16) -> None:
        self._states: dict[str, StreamState] = {}
        self._ended: deque[str] = deque(maxlen=remember_ended)

    def state_for(self, key: str, start_sample: int) -> StreamState | None:
        state = self._states.get(key)
        if state is not None and state.fed_samples == start_sample:
            return state
        return StreamState() if start_sample == 0 else None

    def keep(self, key: str, state: StreamState) -> None:
        if key not in self._ended:
            self._states[key] = state

    def end(self, key: str) -> None:
        self._states.pop(key, None)
        self._ended.append(key)

    def __len__(self) -> int:
        return len(self._states)


class FunAsrStreamingRecognizer:
    def __init__(
        self,
        model_ref: str,
        *,
        models_dir: Path | None = None,
        device: str = "cpu",
        cpu_threads: int = 0,
        chunk_size: Sequence[int] = CHUNK_SIZE,
        encoder_chunk_look_back: int = 4,
        decoder_chunk_look_back: int = 1,
    ) -> None:
        self._loaded = load_funasr_model(
            model_ref, models_dir=models_dir, device=device, num_threads=cpu_threads or None
        )
        if self._loaded.model_class != "ParaformerStreaming":
            raise ValueError(
                f"{model_ref}: a streaming model (ParaformerStreaming, e.g. "
                f"paraformer-zh-streaming) is needed, not {self._loaded.model_class}"
            )
        self.name = f"{Path(self._loaded.source).name}-streaming"
        self._options = {
            "chunk_size": list(chunk_size),
            "encoder_chunk_look_back": encoder_chunk_look_back,
            "decoder_chunk_look_back": decoder_chunk_look_back,
        }
        self.chunk_samples = int(chunk_size[1]) * SAMPLES_PER_FRAME

    def run(self, chunks: Sequence[StreamChunk]) -> list[StreamState | Exception]:
        """Each chunk's next state, in order; a failed item is its exception, alone."""
        out: list[StreamState | Exception] = []
        for chunk in chunks:
            try:
                out.append(self.step(chunk.state, chunk.samples))
            except Exception as exc:  # one utterance's failure is not the batch's
                logger.warning("streaming step failed: %r", exc)
                out.append(exc)
        return out

    def step(self, state: StreamState, samples: np.ndarray) -> StreamState:
        """``state`` advanced by ``samples`` (the utterance's next samples); ``state``
        itself is left as it was."""
        new = StreamState(copy.deepcopy(state.cache), state.fed_samples, state.text)
        if len(samples) == 0:
            return new
        kwargs = dict(self._loaded.kwargs)  # fresh per call: FunASR reads, never shares
        kwargs.update(self._options)
        data = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        with torch.inference_mode():
            module: Any = self._loaded.module
            raw = module.inference(
                data_in=[data], key=["live"], cache=new.cache, is_final=False, **kwargs
            )
        results = raw[0] if isinstance(raw, tuple) else raw
        piece = results[0]["text"] if results else ""
        new.fed_samples += len(samples)
        # Joined as FunASR joins tokens (a space only between two spaced words), so the
        # text does not depend on where the calls cut the audio.
        new.text = join_tokens([new.text, piece]) if piece else new.text
        return new

    def warmup(self) -> float:
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        self.step(StreamState(), rng.normal(0.0, 0.01, 2 * self.chunk_samples).astype(np.float32))
        elapsed_s = time.perf_counter() - started
        logger.info("warmed up %s in %.2f s", self.name, elapsed_s)
        return elapsed_s
