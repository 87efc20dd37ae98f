"""The package layout's one-way dependencies, read from the source (no imports run).

    core (+ config)  <-  stages (vad, recognizers, punctuation, speakers)  <-  online, batch

- ``serve_app.core`` and ``serve_app.config`` import no other ``serve_app`` package and no
  runtime (Ray, Starlette/FastAPI, torch) at module level: core is pure request logic.
  (A function-level import of ``ray.serve.metrics`` in core/observability.py, of torch in
  core/batching.py's OOM handling and of Ray's AutoscalingConfig validator in config.py are
  the only lazy ones, each optional at run time; they are listed below by name.)
- A stage package imports core, config, itself, and the one shared FunASR loader
  (``serve_app.recognizers.funasr_loader``): never another stage, online or batch.
- ``online`` and ``batch`` never import each other; ``tools`` may import anything, and
  nothing imports ``tools``.

Run alone: ``.venv/bin/python -m pytest tests/core/test_layout.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "serve_app"
STAGES = ("vad", "recognizers", "punctuation", "speakers")
RUNTIMES = ("ray", "starlette", "fastapi", "torch", "funasr", "faster_whisper")
# Lazy imports inside functions that core/config may make (module, imported name).
LAZY_ALLOWED = {
    ("core/observability.py", "ray.serve"),
    ("core/batching.py", "torch"),
    ("config.py", "ray.serve.config"),
}
MAX_MODULE_LINES = 600


def _layer(relative: Path) -> str:
    return relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            # ``from serve_app import x`` imports the module serve_app.x
            out += (
                [(n, id(node) in top) for n in names]
                if node.module == "serve_app"
                else [(node.module, id(node) in top)]
            )
    return out


def _target_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "serve_app" or len(parts) < 2:
        return None
    return parts[1]


def _violations(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        layer = _layer(relative)
        for module, at_top in _imports(path):
            target = _target_layer(module)
            where = f"{relative}: imports {module}"
            if layer in ("core", "config"):
                if target is not None and target not in ("core", "config"):
                    found.append(where)
                if module.split(".")[0] in RUNTIMES and (
                    at_top or (str(relative), module) not in LAZY_ALLOWED
                ):
                    found.append(where)
            elif layer in STAGES:
                shared_loader = module == "serve_app.recognizers.funasr_loader"
                if target in (*STAGES, "online", "batch", "tools") and target != layer:
                    if not shared_loader:
                        found.append(where)
            elif layer == "online" and target in ("batch", "tools"):
                found.append(where)
            elif layer == "batch" and target in ("online", "tools"):
                found.append(where)
            if layer != "tools" and target == "tools":
                found.append(where)
    return found


def test_dependencies_point_one_way() -> None:
    assert _violations(PACKAGE) == []


def test_the_check_catches_a_wrong_way_import(tmp_path: Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("from serve_app.online.app import build_app\n")
    (tmp_path / "core" / "runtime.py").write_text("import ray\n")
    (tmp_path / "speakers").mkdir()
    (tmp_path / "speakers" / "x.py").write_text(
        "from serve_app.recognizers.funasr_backend import FunAsrBackend\n"
        "from serve_app.recognizers.funasr_loader import load_funasr_model\n"
    )
    (tmp_path / "batch").mkdir()
    (tmp_path / "batch" / "y.py").write_text("def f():\n    from serve_app.online import forms\n")
    assert _violations(tmp_path) == [
        "batch/y.py: imports serve_app.online",
        "core/bad.py: imports serve_app.online.app",
        "core/runtime.py: imports ray",
        "speakers/x.py: imports serve_app.recognizers.funasr_backend",
    ]


@pytest.mark.parametrize("top", ["serve_app", "scripts", "tests"])
def test_no_module_over_600_lines(top: str) -> None:
    root = PACKAGE.parent / top
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    ("modules", "runtimes"),
    [
        ("serve_app.online.ingress", ("torch", "funasr", "faster_whisper", "onnxruntime")),
        # Moonshine runs on ONNX Runtime: its .ort reader (onnxruntime.tools) must not bring
        # torch in (onnxruntime.tools' own __init__ would).
        ("serve_app.recognizers.moonshine_backend, serve_app.recognizers.ort_format", ("torch",)),
    ],
    ids=["ingress", "moonshine"],
)
def test_a_replica_loads_no_model_runtime_it_does_not_run(modules: str, runtimes: tuple) -> None:
    """The ingress decodes, routes and batches requests and runs no model; the Moonshine
    replica runs ONNX Runtime. Neither process may pay for torch's import (2-6 CPU-s and
    ~190 MB on every replica's start: measured on the 2-core dev machine, 2026-12-07), nor
    the ingress for FunASR's. A replica imports its class's module (and its arguments'
    types), not the app builder. Run in a fresh interpreter."""
    import subprocess
    import sys

    code = f"import sys, {modules}; print(sorted(m for m in {runtimes!r} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=PACKAGE.parent,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
