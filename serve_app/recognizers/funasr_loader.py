"""The one FunASR model loader: local folders and hub ids, shared by every FunASR stage.

Recognizers, the CT-Transformer punctuation stage and CAM++ speaker embeddings all load
through :func:`load_funasr_model`, so offline mode, hub probing and FunASR's import-time
side effects are handled in one place.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import logging
import os
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import torch

from serve_app.core.modelref import OFFLINE_ENV_VARS, downloads_disabled
from serve_app.recognizers.bare_package import bare_package

logger = logging.getLogger(__name__)

T = TypeVar("T")


HUB_PROBE_TIMEOUT_S = 3.0


class FunAsrModelNotFoundError(FileNotFoundError):
    """A model reference is neither a local FunASR model folder nor a reachable hub id."""


@dataclass(frozen=True)
class LoadedFunAsrModel:
    """What FunASR's loader builds: the module and the resolved kwargs it infers with.

    ``kwargs`` holds the built ``tokenizer`` and ``frontend`` and the merged config; treat
    it as read-only and copy it per call.
    """

    module: torch.nn.Module
    kwargs: dict[str, Any]
    source: str

    @property
    def model_class(self) -> str:
        return str(self.kwargs["model"])


@contextlib.contextmanager
def contained_funasr_side_effects() -> Iterator[None]:
    """Keep FunASR from reconfiguring logging and printing to stdout.

    Importing funasr calls ``logging.basicConfig(level=INFO)`` (``funasr/bin/realtime_ws.py``)
    and its loader logs through the root logger (which configures it on first use), turning
    on INFO logs of every library; it also ``print``s notices (ffmpeg missing, checkpoint
    keys missing). The root logger is restored afterwards and the prints are re-logged.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    if not handlers:
        root.addHandler(logging.NullHandler())  # makes basicConfig a no-op meanwhile
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        for line in printed.getvalue().splitlines():
            if line.strip():
                # e.g. "Warning, miss key in ckpt": a checkpoint that does not fit the config
                important = "warning" in line.lower() or "error" in line.lower()
                logger.log(logging.WARNING if important else logging.INFO, "funasr: %s", line)


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / "config.yaml").is_file() or (path / "configuration.json").is_file()
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_model_id(model_ref: str, hub: str) -> str:
    """FunASR's short aliases ("paraformer-zh", "fsmn-vad") -> full hub ids."""
    with contained_funasr_side_effects():
        from funasr.download.name_maps_from_hub import name_maps_hf, name_maps_ms

    names = name_maps_hf if hub in ("hf", "huggingface") else name_maps_ms
    return str(names.get(model_ref, model_ref))


def _cached_hub_dir(model_id: str, hub: str) -> Path | None:
    """A complete copy of ``model_id`` already in the hub's local cache, if any."""
    if hub in ("hf", "huggingface"):
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model_id, local_files_only=True))
        except Exception:  # any failure just means "not cached"
            return None
        return path if _is_model_dir(path) else None
    roots = [Path.home() / ".cache" / "modelscope" / "hub"]
    if os.environ.get("MODELSCOPE_CACHE"):
        roots.insert(0, Path(os.environ["MODELSCOPE_CACHE"]))
    for root in roots:
        for candidate in (root / "models" / model_id, root / "hub" / "models" / model_id):
            if _is_model_dir(candidate) and (candidate / "model.pt").is_file():
                return candidate
    return None


def _hub_host(hub: str) -> str:
    if hub in ("hf", "huggingface"):
        return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    return os.environ.get("MODELSCOPE_DOMAIN", "modelscope.cn")


def _reachable(host: str, timeout_s: float) -> bool:
    """TCP-connect to ``host:443`` within ``timeout_s`` (DNS included: run in a thread)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(outcome and outcome[0])


def resolve_model_dir(model_ref: str, models_dir: Path | None) -> Path | None:
    """The local folder ``model_ref`` names: itself, or ``models_dir / model_ref``."""
    candidates = [Path(model_ref).expanduser()]
    if models_dir is not None:
        candidates.append(Path(models_dir) / model_ref)
    for candidate in candidates:
        if candidate.is_dir():
            if not _is_model_dir(candidate):
                raise FunAsrModelNotFoundError(
                    f"{candidate} is a folder but not a FunASR model (no config.yaml)"
                )
            return candidate
    return None


# The modules that register (with FunASR's ``tables``) the model, encoder, decoder,
# predictor, frontend, tokenizer and specaug classes of the model families served here:
# Paraformer, BiCif, SeACo, streaming Paraformer, SenseVoiceSmall, FSMN-VAD,
# CT-Transformer, CAM++.
# e_paraformer after paraformer: both register an identical ParaformerSANMDecoder and
# FunASR's own import leaves e_paraformer's (tests/recognizers/test_funasr_lean_import.py).
_LEAN_MODULES = (
    "funasr.frontends.wav_frontend",
    "funasr.tokenizer.char_tokenizer",
    "funasr.tokenizer.sentencepiece_tokenizer",
    "funasr.models.specaug.specaug",
    "funasr.models.sanm.encoder",
    "funasr.models.paraformer.decoder",
    "funasr.models.paraformer.cif_predictor",
    "funasr.models.paraformer.model",
    "funasr.models.e_paraformer.decoder",
    "funasr.models.bicif_paraformer.cif_predictor",
    "funasr.models.bicif_paraformer.model",
    "funasr.models.contextual_paraformer.decoder",
    "funasr.models.seaco_paraformer.model",
    "funasr.models.scama.encoder",
    "funasr.models.paraformer_streaming.model",
    "funasr.models.sense_voice.model",
    "funasr.models.fsmn_vad_streaming.encoder",
    "funasr.models.fsmn_vad_streaming.model",
    "funasr.models.ct_transformer_streaming.encoder",
    "funasr.models.ct_transformer.model",
    "funasr.models.campplus.model",
)


def import_funasr() -> None:
    """Import FunASR with only the model families served here registered.

    ``import funasr`` runs its package ``__init__``, which imports every one of FunASR's
    modules (transformers, scikit-learn, torch.distributed among them): 10.8 CPU-s on the
    2-core dev machine, paid by every VAD, recognizer and punctuation replica and every
    Ray Data actor at start. This installs the package without that walk and imports the
    :data:`_LEAN_MODULES` (4.2 CPU-s measured the same way); a model whose classes they do
    not register is loaded after the full import (:func:`load_with_funasr`). A process that
    imported FunASR already keeps what it has.
    """
    if "funasr" in sys.modules:
        return
    package = bare_package("funasr", {"AutoModel": _import_auto_model})
    if package is None:
        raise ModuleNotFoundError("funasr is not installed", name="funasr")
    package.__dict__["__version__"] = (
        (Path(package.__path__[0]) / "version.txt").read_text().strip()
    )
    package.__dict__["_lean"] = True
    sys.modules["funasr"] = package
    try:
        _cheap_class_lines()
        for module in _LEAN_MODULES:
            importlib.import_module(module)
    except BaseException:
        del sys.modules["funasr"]
        raise


def _cheap_class_lines() -> None:
    """FunASR's ``tables.register`` decorator records each class's source line for its
    table printout with ``inspect.getsourcelines``, which for a class parses the class's
    whole module (Python < 3.13): 1.2 of the lean import's 1.5 CPU-s (2026-12-07, the
    2-core dev machine). Registration itself is unchanged; the line recorded is the first
    line of the class's first method (0 for a class without one)."""
    import funasr.register as register

    if getattr(register.inspect, "_cheap", False):
        return
    register.inspect = types.SimpleNamespace(  # type: ignore[assignment]
        _cheap=True, getfile=inspect.getfile, getsourcelines=_first_method_line
    )


def _first_method_line(cls: type) -> tuple[list[str], int]:
    lines = [f.__code__.co_firstlineno for f in vars(cls).values() if hasattr(f, "__code__")]
    return [], min(lines, default=0)


# auto_model imports CAM++'s clustering at module level (scikit-learn, scipy.stats and
# pandas: 2.5-6 CPU-s in every replica, measured on the 2-core dev machine), inside a
# ``try/except`` and only for ``AutoModel(spk_model=...)``, which nothing here uses.
_CLUSTERING = "funasr.models.campplus.cluster_backend"


def _import_auto_model() -> Any:
    """FunASR's ``AutoModel`` with the clustering module imported when it is first used:
    auto_model's ``ClusterBackend`` is a function that imports the real class and
    returns its instance."""
    if _CLUSTERING in sys.modules or "funasr.auto.auto_model" in sys.modules:
        from funasr.auto.auto_model import AutoModel

        return AutoModel
    stub = types.ModuleType(_CLUSTERING)

    def cluster_backend(*args: Any, **kwargs: Any) -> Any:
        return importlib.import_module(_CLUSTERING).ClusterBackend(*args, **kwargs)

    stub.__dict__["ClusterBackend"] = cluster_backend
    sys.modules[_CLUSTERING] = stub
    try:
        from funasr.auto.auto_model import AutoModel
    finally:
        if sys.modules.get(_CLUSTERING) is stub:
            del sys.modules[_CLUSTERING]
    return AutoModel


def _import_all_of_funasr() -> None:
    """What ``import funasr`` does: every module, so every class is registered."""
    package = sys.modules.get("funasr")
    if package is None or not package.__dict__.get("_lean"):
        return
    logger.info("importing all of FunASR for a model outside the served families")
    assert package.__spec__ is not None and package.__spec__.loader is not None
    package.__spec__.loader.exec_module(package)
    package.__dict__["_lean"] = False


def load_with_funasr(build: Callable[[], T]) -> T:
    """``build()`` (FunASR's model construction) after :func:`import_funasr`; once more
    after FunASR's full import when a class it needs was not registered (FunASR raises an
    AssertionError or a RuntimeError "... is not registered", or calls ``None``: a
    TypeError)."""
    import_funasr()
    try:
        return build()
    except (AssertionError, TypeError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "is not registered" not in str(exc):
            raise
        package = sys.modules.get("funasr")
        if package is None or not package.__dict__.get("_lean"):
            raise
        _import_all_of_funasr()
        return build()


def load_funasr_model(
    model_ref: str,
    *,
    models_dir: Path | None,
    device: str = "cpu",
    hub: str = "ms",
    num_threads: int | None = None,
) -> LoadedFunAsrModel:
    """Load a FunASR model from a local folder or a hub id, through FunASR's own loader.

    ``model_ref`` is tried as a folder, then as ``models_dir / model_ref``, then as a hub
    id (FunASR aliases such as ``paraformer-zh`` allowed), first in the hub's local cache.
    Only then is the hub contacted, and only if ``ASR_OFFLINE``/``FUNASR_OFFLINE`` are unset
    and the hub answers within a few seconds: offline, a missing model fails fast with
    :class:`FunAsrModelNotFoundError` instead of FunASR's ~25 s of retries and its
    misleading "model ... is not registered".

    No VAD or punctuation model is attached. ``num_threads`` defaults to torch's current
    setting (FunASR would otherwise set 4 process-wide). The frontend's dither is set to 0
    so features, and transcripts, are deterministic.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    folder = resolve_model_dir(model_ref, models_dir)
    if folder is None:
        model_id = _hub_model_id(model_ref, hub)
        folder = _cached_hub_dir(model_id, hub)
        if folder is None:
            where = f"not a folder{f' under {models_dir}' if models_dir else ''}"
            if downloads_disabled():
                raise FunAsrModelNotFoundError(
                    f"FunASR model {model_ref!r}: {where}, not in the {hub} cache, "
                    f"and downloads are off ({'/'.join(OFFLINE_ENV_VARS)} is set)"
                )
            host = _hub_host(hub)
            if not _reachable(host, HUB_PROBE_TIMEOUT_S):
                raise FunAsrModelNotFoundError(
                    f"FunASR model {model_ref!r}: {where}, not in the {hub} cache, "
                    f"and the hub ({host}) is unreachable"
                )
    source = str(folder) if folder is not None else model_id
    started = time.perf_counter()

    def build() -> tuple[Any, dict]:
        from funasr import AutoModel

        return AutoModel.build_model(
            model=source,
            device=device,
            hub=hub,
            disable_update=True,
            ncpu=num_threads or torch.get_num_threads(),
        )

    try:
        with contained_funasr_side_effects():
            module, kwargs = load_with_funasr(build)
    except RuntimeError as exc:
        if folder is None and "is not registered" in str(exc):
            # FunASR's way of saying the download failed: it went on with the bare id.
            raise FunAsrModelNotFoundError(
                f"FunASR model {model_ref!r} could not be downloaded from the {hub} hub"
            ) from exc
        raise
    frontend = kwargs.get("frontend")
    if frontend is not None and hasattr(frontend, "dither"):
        frontend.dither = 0.0  # WavFrontend defaults to 1.0: random noise in every feature
    module.eval()
    logger.info(
        "loaded FunASR %s from %s in %.1f s",
        kwargs.get("model"),
        source,
        time.perf_counter() - started,
    )
    return LoadedFunAsrModel(module=module, kwargs=kwargs, source=source)
