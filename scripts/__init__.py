"""Measurements a user or operator runs, from the repository root: ``python -m scripts.<name>``.

    bench/          throughput benchmark: FunASR's and faster-whisper's own paths against
                    this project's Serve app and Ray Data job (``python -m scripts.bench``)
    loadgen         RTFx, latency and batch sizes of a running service at concurrency C
    overload        a burst of long files: every answer a 200 or a fast 503?
    soak            memory of every service process under hours of load
    autoscale_demo  the recognizer scaling up and back down under a load ramp
    restart_under_load  config updates and a graceful stop: nothing in flight may fail
    stage_cost      what punctuation or diarization costs under load (A/B rounds)
    fidelity        WER and dropped sentences against faster-whisper's own transcribe
    language_eval   language detection and WER per language against faster-whisper
    vad_pauses      pauses the VAD misses, cuts in speech, VAD CPU per audio hour
    diarization_eval    DER of the speaker pipeline on espeak-ng conversations
    fuzz            mutated audio through the decoder (and a running service)
    gpu_check/      the prepared GPU check of the recognizer core

What they share (corpora of known text, the HTTP load loops, percentiles, starting a
service) is :mod:`scripts.common`. Product tools a user runs to set the service up
(models, manifests, batch tuning) are in :mod:`serve_app.tools`.
"""
