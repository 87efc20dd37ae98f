"""The Ray worker setup hook of row 5: every ``BatchedRecognizer.transcribe_batch`` logged.

Ray Data actors expose no batch statistics, so row 5 reports batch sizes and padding like
row 6 this way. Ray imports this module in its workers as ``scripts.bench.hook`` (the
repository root on ``PYTHONPATH``): keep its imports to the standard library.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hook_env(stats_path: str) -> dict[str, Any]:
    """``_start_ray`` arguments installing :func:`setup_hook_from_env` in every worker."""
    # Workers import serve_app from the installed package; the hook's module is found
    # through the repository root.
    path = os.environ.get("PYTHONPATH")
    env = {
        "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else REPO,
        "BENCH_STATS_PATH": stats_path,
    }
    return {
        "env_vars": env,
        "runtime_env": {"worker_process_setup_hook": "scripts.bench.hook.setup_hook_from_env"},
    }


def setup_hook_from_env() -> None:
    """The ``worker_process_setup_hook``: with ``BENCH_STATS_PATH`` set, append each
    ``transcribe_batch`` (its ``BatchStats``, start/end time, pid) there as a JSON line.

    Given to Ray as the module path ``scripts.bench.hook.setup_hook_from_env`` in the
    job-level runtime_env; the env var reaches every worker through it.
    """
    stats_path = os.environ.get("BENCH_STATS_PATH")
    if not stats_path:
        return
    from serve_app.recognizers import base

    inner = base.BatchedRecognizer.transcribe_batch

    def transcribe_batch(self: Any, jobs: Any) -> Any:
        t0 = time.time()
        out = inner(self, jobs)
        s = self.last_stats
        line = {
            "pid": os.getpid(),
            "t0": t0,
            "t1": time.time(),
            "sizes": s.batch_sizes,
            "real_s": s.real_audio_s,
            "padded_s": s.padded_audio_s,
            "forward_s": s.forward_s,
        }
        with open(stats_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        return out

    base.BatchedRecognizer.transcribe_batch = transcribe_batch  # type: ignore[method-assign]
