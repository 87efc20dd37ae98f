"""What every part of the benchmark shares: the repository's root and the row names."""

from __future__ import annotations

from scripts.common.service import REPO

__all__ = ["REPO", "ROWS", "ROW_TITLES", "WHISPER_WINDOW_S"]

ROWS = ("1", "2", "3", "4", "5", "6")
ROW_TITLES = {
    "1": "library, one file at a time",
    "2": "library's own batching",
    "3": "funasr-server (C clients)",
    "4": "this project: Ray Serve (C clients)",
    "5": "this project: Ray Data job",
    "6": "floor: forward on sorted batches",
}
WHISPER_WINDOW_S = 30.0
