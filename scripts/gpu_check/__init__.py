"""One prepared GPU check of the recognizer core: FunASR rows, BatchedRecognizer, floor, OOM.

Built for a machine with a GPU, no Ray and no network (the device machine of issue 13):
it imports no Ray and measures the plain classes that Serve replicas and Ray Data actors
run (``BatchedRecognizer`` over ``FunAsrBackend``, audio decode and VAD included), on
random-weight, architecture-faithful Paraformer-large and SenseVoiceSmall folders that it
writes on the spot (:mod:`serve_app.tools.random_models`) and a deterministic numpy corpus
(speech-like voiced bursts and pauses, 2-30 s files, 16 kHz WAV bytes: no espeak-ng there).

Rows, per model and precision (``--precision fp16,bf16``; fp32 on CPU):

- ``a_generate_per_file``: FunASR ``AutoModel.generate`` one file per call, no VAD.
- ``b_generate_vad_batch_size_s``: ``AutoModel`` with its fsmn-vad and ``batch_size_s``
  (= the tuned forward budget); skipped when no fsmn-vad folder is found.
- ``c_batched_recognizer``: ``BatchedRecognizer.transcribe_batch`` over all VAD segments
  (or the corpus items, each <= 30 s, when there is no VAD), the tuned budget of
  ``ray_configs/*_gpu.yaml``; fbank (CPU) and forward included, decode and VAD not.
- ``c_budget_sweep``: the same over a sweep of the forward budget (``max_batch_audio_s``),
  ``torch.cuda.max_memory_allocated`` per point, and the knee (smallest budget within 5 %
  of the best throughput): the batch tuner's measurement (:mod:`serve_app.tools.tune_sweep`).
- ``d_forward_floor``: the model's ``inference`` on features computed beforehand (on the
  device), the same batches: no audio decode, no fbank.
- ``e_time_split``: seconds of decode, VAD, CPU fbank and device forward for the corpus,
  the fbank share of row c, and the GPU idle fraction of row c (1 - floor / row c).
- ``f_oom_split``: a deliberately oversized batch. On CUDA a real
  ``torch.cuda.OutOfMemoryError`` (the allocator capped with
  ``torch.cuda.set_per_process_memory_fraction`` just above what half the batch needs), on
  CPU a simulated one raised by a wrapper around the backend; the batch must be split and
  every item finished.
- ``g_gpu_fbank``: row c with fbank computed on the device by a batched, Kaldi-compatible
  torch fbank (the VAD's mel banks, :mod:`serve_app.vad.kaldi_fbank`, over a padded batch,
  then LFR and CMVN; checked against FunASR's own frontend: ``max_abs_diff``).
- ``g_overlap_prep``: row c with CPU fbank in a thread pool, overlapped with the device
  forwards.

Rows stop early when ``--time-budget-s`` runs out (partial results, ``partial: true`` or a
``skipped`` reason), so a run never overruns its lease. Output: ``--out`` JSON and a
markdown table on stdout. The transcripts are gibberish (random weights): throughput and
memory only.

Usage (GPU): python -m scripts.gpu_check --device cuda --precision fp16,bf16 --out gpu.json
Dry run (CPU, the suite's test): python -m scripts.gpu_check --device cpu --tiny --out x.json

The wheels it needs on the GPU machine (no network there) are named in ``requirements.txt``
and downloaded by ``bash scripts/gpu_check/wheels.sh``. It imports no Ray, no httpx.

    prepare.py   time budget, corpus, random-weight models, VAD segments, the run's context
    rows.py      the rows of one model at one precision (a ... g), each recorded as it ends
    features.py  the batched torch fbank and the backends of rows d, f and g
    cli.py       flags, the run, the JSON and markdown report
"""
