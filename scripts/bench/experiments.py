"""The Ray worker setup hook of rows 4 and 5, and the A/B experiments it applies.

Ray imports this module in its workers as ``scripts.bench.experiments`` (the repository
root on ``PYTHONPATH``): keep its imports to the package's ``common``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .common import REPO

EXPERIMENTS = {
    # A/B switches for proposed fixes to shared code, applied in the Ray workers of rows 4
    # and 5 by a worker_process_setup_hook, so they can be measured without editing them.
    "omp-passive": "OMP_WAIT_POLICY=PASSIVE in every Ray worker (no OpenMP spin-waiting)",
    "model-actor": "the Serve recognizer replica runs the model in a plain Ray actor of its "
    "own (sync, main thread) instead of in the replica process",
}


def _hook_env(experiments: Sequence[str], stats_path: str | None) -> dict[str, Any]:
    """``_start_ray`` arguments installing :func:`setup_hook_from_env` in every worker."""
    env = {"BENCH_EXPERIMENTS": ",".join(experiments), **_experiment_env(experiments)}
    # Workers import serve_app from the installed package; the hook's module is found
    # through the repository root.
    path = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    if stats_path:
        env["BENCH_STATS_PATH"] = stats_path
    return {
        "env_vars": env,
        "runtime_env": {
            "worker_process_setup_hook": "scripts.bench.experiments.setup_hook_from_env"
        },
    }


def _with_hook(app_args: dict, hook: dict) -> dict:
    """``app_args`` with the hook's runtime_env added to every deployment's actor options."""
    import copy

    args = copy.deepcopy(app_args)
    deployments = [args.setdefault("vad_deployment", {})]
    deployments.append(args.setdefault("ingress", {}).setdefault("deployment", {}))
    deployments += [rec.setdefault("deployment", {}) for rec in args["recognizers"]]
    for deployment in deployments:
        runtime_env = deployment.setdefault("ray_actor_options", {}).setdefault("runtime_env", {})
        runtime_env.update(hook["runtime_env"])
        runtime_env["env_vars"] = {**hook["env_vars"], **runtime_env.get("env_vars", {})}
    return args


def _experiment_env(experiments: Sequence[str]) -> dict[str, str]:
    return {"OMP_WAIT_POLICY": "PASSIVE"} if "omp-passive" in experiments else {}


def setup_hook_from_env() -> None:
    """The ``worker_process_setup_hook`` of row 5 (and of row 4's env-var experiments),
    configured by env vars.

    Given to Ray as the module path ``scripts.bench.experiments.setup_hook_from_env`` in the
    job-level runtime_env; the env vars reach every worker through it.
    """
    experiments = [e for e in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if e]
    _setup_hook(os.environ.get("BENCH_STATS_PATH") or None, experiments)()


def _setup_hook(stats_path: str | None, experiments: Sequence[str]) -> Callable[[], None]:
    """A Ray ``worker_process_setup_hook`` for rows 4 and 5.

    With ``stats_path`` it logs every ``BatchedRecognizer.transcribe_batch`` (its
    ``BatchStats`` and start/end times) as JSON lines: Ray Data actors expose no batch
    statistics, so row 5 reports batch sizes and padding like row 6 this way. It also
    applies the ``experiments`` (see :data:`EXPERIMENTS`).
    """
    experiments = tuple(experiments)

    def hook() -> None:
        import json as _json
        import time as _time
        from os import getpid as _os_pid

        if stats_path is None:
            return
        from serve_app.recognizers import base

        inner = base.BatchedRecognizer.transcribe_batch

        def transcribe_batch(self: Any, jobs: Any) -> Any:
            t0 = _time.time()
            out = inner(self, jobs)
            s = self.last_stats
            line = {
                "pid": _os_pid(),
                "t0": t0,
                "t1": _time.time(),
                "sizes": s.batch_sizes,
                "real_s": s.real_audio_s,
                "padded_s": s.padded_audio_s,
                "forward_s": s.forward_s,
            }
            with open(stats_path, "a") as fh:
                fh.write(_json.dumps(line) + "\n")
            return out

        base.BatchedRecognizer.transcribe_batch = transcribe_batch  # type: ignore[method-assign]

    return hook


def _model_actor_deployment() -> Any:
    """Experiment "model-actor": a ``RecognizerDeployment`` whose recognizer runs in a plain
    Ray actor of its own (tasks on that actor's main thread, no Serve machinery in its
    process), called once per dynamic batch; the replica keeps the batching, coalescing and
    metrics. This is the proposed change to serve_app/online/deployments/recognizer.py, built here
    (classes defined in a function travel by value to the replica) so it can be measured
    without editing that file."""
    import os as _os

    import ray as _ray
    from ray import serve as _serve

    from serve_app.online.deployments import recognizer as _rec

    class _Worker:
        def __init__(self, settings: Any, models_dir: Any) -> None:
            from serve_app.recognizers.factory import build_recognizer

            self._recognizer = build_recognizer(settings, models_dir)

        def transcribe_batch(self, jobs: Any) -> Any:
            return self._recognizer.transcribe_batch(jobs), self._recognizer.last_stats

    class _Proxy:
        def __init__(self, settings: Any, models_dir: Any) -> None:
            threads = _os.environ.get("OMP_NUM_THREADS", "1")
            self._actor = (
                _ray.remote(_Worker)
                .options(num_cpus=0, runtime_env={"env_vars": {"OMP_NUM_THREADS": threads}})
                .remote(settings, models_dir)
            )
            _ray.get(self._actor.__ray_ready__.remote())
            self.last_stats = None

        def transcribe_batch(self, jobs: Any) -> Any:
            results, self.last_stats = _ray.get(self._actor.transcribe_batch.remote(jobs))
            return results

        def validate(self, options: Any) -> None:
            # The benchmark sends default options only; the real change would keep this
            # check in the replica (it needs the backend's option rules, not its weights).
            return None

    base = _rec.RecognizerDeployment.func_or_class

    class ModelActorRecognizer(base):  # type: ignore[misc, valid-type]
        def __init__(self, settings: Any, models_dir: str) -> None:
            # The base class travels by value too (its module name resolves to the
            # Deployment, not the class): patch the globals its __init__ actually uses.
            scope = base.__init__.__globals__
            original = scope["build_recognizer"]
            scope["build_recognizer"] = _Proxy
            try:
                super().__init__(settings, models_dir)
            finally:
                scope["build_recognizer"] = original

    return _serve.deployment(ModelActorRecognizer)
