"""Build (or show) the cached benchmark corpus: the command line of ``bench/corpus.py``.

    python scripts/bench_corpus.py --corpus-minutes 30 --corpus-dir /tmp/asr-bench-corpus

``import bench_corpus`` (with ``scripts/`` on ``sys.path``) still gives that module's names.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from bench.corpus import *  # noqa: E402, F403
from bench.corpus import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
