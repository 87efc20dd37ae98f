"""What the measurement scripts share.

    audio.py          spoken files of known text (espeak-ng), WAV bytes, files from disk
    conversations.py  espeak-ng conversations with known speaker turns (diarization)
    http.py           one answer record, the HTTP load loops (closed run, A/B rounds, looped
                      clients), percentiles, /v1/stats deltas
    service.py        free ports, waiting, ``serve run`` of a config, an in-process app, an
                      app's state on the dashboard, the RSS of every process of a service
    local_cluster.py  a multi-node Ray cluster on one machine (``scripts.multinode``)

The espeak-ng speech itself is :mod:`serve_app.tools.speech` (the batch tuner's corpus is
spoken the same way).
"""
