"""Side-by-side throughput benchmark: FunASR's own paths against this project's.

One run, one generated corpus (:mod:`serve_app.tools.corpus`: recordings of 5 s to 10 min
with pauses, 30 min by default, cached on disk) and the same model files for every row:

    1  library, one file at a time   FunASR ``AutoModel.generate(file)`` (no VAD, its default
                                      batch_size=1 path) | faster-whisper ``transcribe(file)``
                                      (sequential, greedy)
    2  library's own batching         FunASR ``AutoModel`` + fsmn-vad + ``batch_size_s`` |
                                      faster-whisper ``BatchedInferencePipeline``
    3  funasr-server                  FunASR's OpenAI-compatible server, C HTTP clients
                                      (FunASR models only: it cannot serve CTranslate2)
    4  this project, Ray Serve        ``serve_app.online.app:build_app``, the same C HTTP clients
    5  this project, Ray Data         ``serve_app.batch.job.run_job`` over a manifest
    6  floor                          the backend's forward pass alone on pre-decoded VAD
                                      segments, sorted and packed (``BatchedRecognizer``)

Every row runs in its own child process (clean memory figures, its own Ray cluster where it
needs one, started with ``ray.init(address="local")`` and shut down after: never another
engineer's cluster). Before each row the script waits until the 1-minute load average is
below ``--max-load``, and it records the load and the CPU that processes outside the row
used meanwhile. It prints, per row: RTFx (corpus audio seconds / wall seconds), p50/p95/p99
latency (per file for rows 1-2, per HTTP request for rows 3-4), the batch-size
distribution, padding efficiency (real / padded audio), peak memory (RSS summed over the
row's process tree, sampled; GPU: ``torch.cuda.max_memory_allocated`` in-process, else
``nvidia-smi``), and the ratios 4/1, 4/3, 4/6, 5/2, 5/6 against their targets.

    python -m scripts.bench                       # 30 min corpus, both models, all rows
    python -m scripts.bench --corpus-minutes 5 --models whisper-tiny.en --rows 1,4,6
    python -m scripts.bench --device cuda --precision fp16 --concurrency 64

See docs/BENCHMARKS.md for the figures and how they were taken.

The package, one module per part (``__main__.py`` runs ``cli.py``); the corpus and the
models by name are the batch tuner's (:mod:`serve_app.tools.corpus`,
:mod:`serve_app.tools.models`), so both measure the same thing:

    cli.py                  flags, then every model x row, then the report
    settings.py             the batch settings and app / job configs of the rows
    orchestrate.py          a row in a child process: load gate, sampling, reruns, reaping
    worker.py               the child process: runs one row module, writes its figures
    row1_library_sequential.py, row2_library_batched.py (+ funasr_automodel.py),
    row3_funasr_server.py, row4_serve.py, row5_ray_data.py, row6_floor.py
                            how row N is timed, one module each
    harness.py              what the rows share: corpus, warm-up audio, HTTP load, Ray
    hook.py                 the Ray worker setup hook that logs row 5's batches
    measure.py              batch records, process sampling, CPU per role
    report.py               ratios, the console and Markdown tables, the JSON file
"""
