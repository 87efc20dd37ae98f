"""What live partials cost one session on CPU: 2pass streaming vs re-decoding the prefix.

One utterance of ``--seconds`` gets a partial every ``--interval-s`` (the ingress's
``partial_interval_s``), both ways, on one thread, in the same process:

- ``streaming``: FunASR's streaming Paraformer fed only the new samples each time, its
  state carried over (serve_app/recognizers/funasr_streaming.py, a ``streaming`` section);
- ``re-decode``: the offline Paraformer decoding the whole utterance so far (the default
  partials, as low-priority recognizer items).

Prints core-ms per second of audio for both and the streaming state's pickled size (what
each call would carry through Ray if the state travelled; it stays on the streaming
replica). Random-weight folders of the real sizes
(:mod:`serve_app.tools.random_models`; written to ``--models-dir`` when missing):

    python -m scripts.partial_cost --seconds 8 16 --rounds 2
    python -m scripts.partial_cost --streaming paraformer-streaming-tiny \
        --offline paraformer-tiny --seconds 3     # smoke size
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _folder(models_dir: Path, name: str) -> Path:
    from serve_app.tools.random_models import write_model

    folder = models_dir / name
    if not (folder / "model.pt").is_file():
        write_model(name, models_dir)
    return folder


def measure(streaming, offline, audio: np.ndarray, interval_s: float) -> dict:
    from serve_app.core.types import SegmentJob
    from serve_app.recognizers.funasr_streaming import StreamState

    step = int(16000 * interval_s)
    ends = range(step, len(audio) + 1, step)
    state, streaming_s, state_mb = StreamState(), 0.0, 0.0
    for end in ends:
        started = time.perf_counter()
        state = streaming.step(state, audio[state.fed_samples : end])
        streaming_s += time.perf_counter() - started
        state_mb = max(state_mb, len(pickle.dumps(state)) / 1e6)
    started = time.perf_counter()
    for end in ends:
        offline.forward([SegmentJob(audio[:end])])
    redecode_s = time.perf_counter() - started
    seconds = len(audio) / 16000
    return {
        "seconds": seconds,
        "partials": len(ends),
        "streaming_ms_per_audio_s": round(streaming_s / seconds * 1000),
        "redecode_ms_per_audio_s": round(redecode_s / seconds * 1000),
        "state_mb": round(state_mb, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streaming", default="paraformer-streaming-large")
    parser.add_argument("--offline", default="paraformer-large")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "rm")
    parser.add_argument("--seconds", type=float, nargs="+", default=[8.0, 16.0])
    parser.add_argument("--interval-s", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from serve_app.recognizers.funasr_backend import FunAsrBackend
    from serve_app.recognizers.funasr_streaming import FunAsrStreamingRecognizer

    torch.set_num_threads(1)
    streaming = FunAsrStreamingRecognizer(
        str(_folder(args.models_dir, args.streaming)), cpu_threads=1
    )
    offline = FunAsrBackend(str(_folder(args.models_dir, args.offline)), num_threads=1)
    streaming.warmup()
    offline.warmup()
    rng = np.random.default_rng(0)
    print(f"# {args.streaming} vs {args.offline}, 1 thread, a partial every {args.interval_s} s")
    for seconds in args.seconds:
        audio = (rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
        for round_ in range(args.rounds):
            row = measure(streaming, offline, audio, args.interval_s)
            print(
                f"{seconds:5.1f} s utterance, round {round_}: {row['partials']} partials; "
                f"core-ms per audio-s: streaming {row['streaming_ms_per_audio_s']}, "
                f"re-decode {row['redecode_ms_per_audio_s']}; "
                f"streaming state {row['state_mb']} MB pickled"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
