"""What the measurement scripts share.

audio.py          spoken files of known text (espeak-ng), WAV bytes
conversations.py  espeak-ng conversations with known speaker turns
http.py           the HTTP load loops, one answer record, percentiles, /v1/stats deltas
service.py        free ports, waiting, ``serve run`` of a config, an in-process app
"""
