"""Speaker embeddings and diarization: backends behind one protocol, the batched embedder,
and the pure per-request diarization logic (windows, clustering, turns, assignment)."""
