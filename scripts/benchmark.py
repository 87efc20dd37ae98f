"""Side-by-side throughput benchmark: FunASR's own paths against this project's.

The command line of the ``scripts/bench/`` package (read its ``__init__.py`` for the rows,
one module each):

    python scripts/benchmark.py                       # 30 min corpus, both models, all rows
    python scripts/benchmark.py --corpus-minutes 5 --models whisper-tiny.en --rows 1,4,6
    python scripts/benchmark.py --device cuda --precision fp16 --concurrency 64

See docs/BENCHMARKS.md for the figures and how they were taken.
"""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

# ``main``, and the names other scripts imported from this file before it became a package.
from bench.cli import main  # noqa: E402
from bench.measure import _nvidia_smi_used_mib, _psutil, cpu_breakdown, cpu_by_process  # noqa: E402
from bench.models import ModelSpec, _models_dir, resolve_model  # noqa: E402
from bench.report import machine  # noqa: E402
from bench.settings import _precision  # noqa: E402

__all__ = [
    "ModelSpec",
    "_models_dir",
    "_nvidia_smi_used_mib",
    "_precision",
    "_psutil",
    "cpu_breakdown",
    "cpu_by_process",
    "machine",
    "main",
    "resolve_model",
]

if __name__ == "__main__":
    sys.exit(main())
