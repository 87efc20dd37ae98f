"""FunASR imported without its every-module walk (serve_app.recognizers.funasr_loader).

Each check runs in a fresh interpreter: what FunASR registers depends on what the process
imported before. The lean import must register, for every class name the served model
families use, the very class FunASR's own full import registers (same module and name),
and a model outside those families must still load, after the full import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Each check imports FunASR whole in a fresh interpreter: 15-25 s apiece on 2 cores.
pytestmark = pytest.mark.slow

_REGISTRY = """
import json, sys
from serve_app.recognizers.funasr_loader import import_funasr
if sys.argv[1] == "lean":
    import_funasr()
else:
    import funasr  # FunASR's own import: every module
from funasr.register import tables
out = {}
for table in ("model_classes", "encoder_classes", "decoder_classes", "predictor_classes",
              "frontend_classes", "tokenizer_classes", "specaug_classes"):
    for name, cls in getattr(tables, table).items():
        out[f"{table}:{name}"] = f"{cls.__module__}.{cls.__qualname__}"
print(json.dumps({"lean": sys.modules["funasr"].__dict__.get("_lean", False), "classes": out}))
"""


def _run(code: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lean_import_registers_the_classes_the_full_import_does() -> None:
    lean = _run(_REGISTRY, "lean")
    full = _run(_REGISTRY, "full")
    assert lean["lean"] is True and full["lean"] is False
    served = {
        "model_classes:Paraformer",
        "model_classes:BiCifParaformer",
        "model_classes:SeacoParaformer",
        "model_classes:ParaformerStreaming",
        "model_classes:SenseVoiceSmall",
        "model_classes:FsmnVADStreaming",
        "model_classes:CTTransformer",
        "model_classes:CAMPPlus",
        "encoder_classes:SANMEncoder",
        "encoder_classes:SANMEncoderChunkOpt",
        "encoder_classes:SenseVoiceEncoderSmall",
        "encoder_classes:FSMN",
        "decoder_classes:ParaformerSANMDecoder",
        "decoder_classes:ContextualParaformerDecoder",
        "predictor_classes:CifPredictorV2",
        "predictor_classes:CifPredictorV3",
        "frontend_classes:WavFrontend",
        "frontend_classes:WavFrontendOnline",
        "tokenizer_classes:CharTokenizer",
        "tokenizer_classes:SentencepiecesTokenizer",
        "specaug_classes:SpecAugLFR",
    }
    assert served <= set(lean["classes"])
    # Each served name is the very class FunASR's own import registers (some names are
    # registered by two modules; what the import order leaves must be the same).
    assert {k: lean["classes"][k] for k in served} == {k: full["classes"][k] for k in served}
    assert len(lean["classes"]) < len(full["classes"])  # it is leaner


def test_a_model_outside_the_served_families_loads_after_the_full_import() -> None:
    code = """
import json, sys
from serve_app.recognizers.funasr_loader import import_funasr, load_with_funasr
import_funasr()
from funasr.register import tables
calls = []

def build():  # FunASR's loader asserts the class is registered
    calls.append(1)
    cls = tables.model_classes.get("Conformer")
    assert cls is not None, "Conformer is not registered"
    return cls.__name__

print(json.dumps({"built": load_with_funasr(build), "calls": len(calls),
                  "lean": sys.modules["funasr"].__dict__["_lean"]}))
"""
    assert _run(code) == {"built": "Conformer", "calls": 2, "lean": False}


def test_funasrs_runtime_error_for_an_unregistered_model_also_falls_back() -> None:
    """AutoModel raises ``RuntimeError("model 'X' is not registered.")`` for a model class
    the lean import did not register (seen with the streaming Paraformer before it joined
    the lean modules): the full import follows, as for the assertion."""
    code = """
import json, sys
from serve_app.recognizers.funasr_loader import import_funasr, load_with_funasr
import_funasr()
from funasr.register import tables
calls = []

def build():
    calls.append(1)
    cls = tables.model_classes.get("Conformer")
    if cls is None:
        raise RuntimeError("model 'Conformer' is not registered.")
    return cls.__name__

print(json.dumps({"built": load_with_funasr(build), "calls": len(calls)}))
"""
    assert _run(code) == {"built": "Conformer", "calls": 2}


def test_automodel_leaves_the_clustering_and_class_sources_for_later() -> None:
    """``AutoModel``'s import would bring scikit-learn, scipy.stats and pandas (CAM++
    clustering, for ``AutoModel(spk_model=...)`` only) and registration would parse the
    source of every registered class's module (a class's source lines: its whole module
    parsed; torch's functions are cheap and not counted): neither happens at a replica's start, and
    the clustering class still works when called."""
    code = """
import inspect, json, sys
parsed = []
real = inspect.getsourcelines
inspect.getsourcelines = lambda obj: (isinstance(obj, type) and parsed.append(obj)) or real(obj)
from serve_app.recognizers.funasr_loader import import_funasr
import_funasr()
from funasr import AutoModel
import funasr.auto.auto_model as auto_model
heavy = sorted(m for m in ("sklearn", "scipy.stats", "pandas") if m in sys.modules)
backend = type(auto_model.ClusterBackend())
from funasr.register import tables
print(json.dumps({"heavy": heavy, "parsed": len(parsed), "backend": backend.__module__,
                  "clustering_after": "sklearn" in sys.modules,
                  "line": tables.model_classes_meta["Paraformer"][2]}))
"""
    out = _run(code)
    assert out["heavy"] == [] and out["parsed"] == 0, out
    assert out["backend"] == "funasr.models.campplus.cluster_backend"
    assert out["clustering_after"] is True
    assert out["line"].startswith("funasr/models/paraformer/model.py:"), out
