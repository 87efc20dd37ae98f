"""Thin Ray Serve wrappers around the plain classes (ingress, VAD, recognizer)."""
