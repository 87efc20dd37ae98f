"""Voice activity detection: FSMN-VAD and Silero span detectors (plain classes)."""
