"""Side-by-side throughput benchmark: FunASR's and faster-whisper's own paths against this
project's, on one generated corpus (:mod:`serve_app.tools.corpus`: 5 s to 10 min
recordings with pauses, 30 min by default, cached) and the same model files:

    1  library, one file at a time   AutoModel.generate(file) | WhisperModel.transcribe
    2  library's own batching         AutoModel + fsmn-vad + batch_size_s |
                                      BatchedInferencePipeline
    3  funasr-server                  FunASR's OpenAI server, C HTTP clients (FunASR only)
    4  this project, Ray Serve        build_app, the same C HTTP clients
    5  this project, Ray Data         serve_app.batch.job.run_job over a manifest
    6  floor                          the backend's forward alone on sorted, packed VAD
                                      segments (BatchedRecognizer)
    7  funasr-onnx, batch_size=1      FunASR's ONNX package on row 6's segments and the
    8  funasr-onnx, its batch_size    same exported graph files (ONNX rows only)

A suffix runs a FunASR row on ONNX Runtime (``runtime: onnx``): ``o`` fp32, ``q`` int8
(FunASR's own export and dynamic quantization, cached): 4o/4q, 5o/5q, 6o/6q, 7o/7q, 8o/8q.
Rows 7 and 8 need ``pip install funasr-onnx==0.4.3 --no-deps`` (``scripts/setup.sh --test``
does it; its numpy<=1.26.4 pin clashes with the project's numpy, it runs with it) and are
n/a without it. Run 6q first:
it exports both graphs once (about a minute for Paraformer-large), later rows load them.

Each row runs in a child process of its own (its own Ray cluster where it needs one, never
another engineer's), after the 1-minute load average drops below ``--max-load``, and again
when other processes took the CPU meanwhile. Printed per row: RTFx (corpus audio s / wall
s), p50/p95/p99 latency, batch sizes, padding efficiency, peak memory, RTFx per core
(per ``--threads``) and the ratios 4/1, 4/3, 4/6, 5/2, 5/6 (issue 25's: 4q/4, 4q/6q, 4q/7q,
4q/8q, 5q/6q) against their targets; a JSON and a Markdown table are written.

    python -m scripts.bench                       # 30 min corpus, both models, all rows
    python -m scripts.bench --corpus-minutes 5 --models whisper-tiny.en --rows 1,4,6
    python -m scripts.bench --device cuda --precision fp16 --concurrency 64
    python -m scripts.bench --models paraformer-large --rows 6q,6o,6,7q,8q,4,4o,4q,5q
    python -m scripts.bench --models sensevoice-small --rows 6q,6,7q,8q,2,4,4q,5q

    cli.py       flags, every model x row, the child process of a row (run_worker)
    settings.py  the batch settings and the app / job configs of the rows
    orchestrate.py, measure.py   a row's child process: load gate, sampling, reruns, reaping
    library.py   rows 1, 2, 6, 7, 8 (in the child process)   services.py   rows 3, 4 and 5
    harness.py   what the rows share   hook.py   the Ray worker hook logging row 5's batches
    report.py    ratios, the console and Markdown tables, the JSON file
"""
