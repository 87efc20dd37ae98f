"""One prepared GPU check of the recognizer core: FunASR rows, BatchedRecognizer, floor, OOM.

For a machine with a GPU, no Ray and no network: it measures the plain classes that Serve
replicas and Ray Data actors run (``BatchedRecognizer`` over ``FunAsrBackend``), on
random-weight, architecture-faithful Paraformer-large and SenseVoiceSmall folders written
on the spot (:mod:`serve_app.tools.random_models`) and a deterministic numpy corpus of
speech-like bursts and pauses (2-30 s files: no espeak-ng there). Rows, per model and
precision (``--precision fp16,bf16``; fp32 on CPU):

- ``a_generate_per_file``: FunASR ``AutoModel.generate`` one file per call, no VAD;
- ``b_generate_vad_batch_size_s``: ``AutoModel`` with its fsmn-vad and ``batch_size_s``;
- ``c_batched_recognizer``: ``BatchedRecognizer.transcribe_batch`` over all VAD segments
  at the tuned budget of ``ray_configs/*_gpu.yaml`` (fbank on CPU + forward);
- ``c_budget_sweep``: the same over a sweep of the budget, peak memory per point and the
  knee (the batch tuner's measurement, :mod:`serve_app.tools.tune_sweep`);
- ``d_forward_floor``: the model's ``inference`` on features already on the device;
- ``e_time_split``: decode, VAD, CPU fbank and forward seconds; the GPU idle fraction of c;
- ``f_oom_split``: an oversized batch must be split and finish (a real CUDA OOM under a
  capped allocator; simulated on CPU);
- ``g_gpu_fbank``: row c's batches with a batched Kaldi fbank on the device (checked
  against FunASR's frontend: ``max_abs_diff``); ``g_overlap_prep``: CPU fbank in a thread
  pool overlapped with the forwards.

A row that fails at every requested precision runs once more in fp32. Rows stop when
``--time-budget-s`` runs out (``partial`` or ``skipped``); the JSON (``--out``) is rewritten
after every row, a markdown table printed at the end. Weights are random: throughput and
memory only. It imports no Ray and no httpx; the wheels it needs there are named in
``requirements.txt`` (``bash scripts/gpu_check/wheels.sh`` downloads them).

    python -m scripts.gpu_check --device cuda --precision fp16,bf16 --out gpu.json
    python -m scripts.gpu_check --device cpu --tiny --out x.json     # the dry run (tests)

    prepare.py   time budget, corpus, models, VAD segments, the context of every row
    rows.py      the rows of one model at one precision   features.py   torch fbank, row f
    cli.py       flags, the run, the report
"""
