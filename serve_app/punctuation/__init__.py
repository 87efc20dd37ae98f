"""Punctuation as a batched stage: text windows across segment boundaries, one runner."""
