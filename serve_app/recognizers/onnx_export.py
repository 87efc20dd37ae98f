"""Export a loaded FunASR model to ONNX with FunASR's own exporter, cached by weights.

FunASR's exporter (``funasr.utils.export_utils.export``, what ``AutoModel.export`` calls)
writes ``model.onnx`` and, with ``quantize=True``, ``model_quant.onnx`` (dynamic int8 on
the MatMuls, per channel, as FunASR ships its int8 models). Two changes around it, both
for the torch versions this project pins, neither to the graph's maths:

- torch >= 2.9 defaults ``torch.onnx.export`` to the dynamo exporter, which needs
  onnxscript and does not take FunASR's ``torch.jit.script`` CIF function; FunASR's
  export code was written for the TorchScript exporter, so it runs with ``dynamo=False``.
- Paraformer family: the encoder's output past each item's length is zeroed (the same
  fix :func:`serve_app.recognizers.funasr_backend._zero_padded_frames` makes on the torch
  path), so a batched item's tokens equal the item run alone.

The files go to a cache folder keyed by the weights' identity (file names, sizes,
mtimes), FunASR's and torch's versions: not into the weights folder, which may be
read-only and whose file list is the result cache's model identity
(:func:`serve_app.online.cache.model_version`). A second start finds the files and does
not export.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serve_app.core.modelref import onnx_cache_dir
from serve_app.recognizers.funasr_loader import LoadedFunAsrModel, contained_funasr_side_effects

logger = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model_quant.onnx"
# Bump when the export changes (wrappers, exporter options): old cache entries are ignored.
_EXPORT_VARIANT = "funasr-export-v1-zero-padded-encoder"
_MAX_IDENTITY_FILES = 1000
_export_lock = threading.Lock()  # torch.onnx.export is patched process-wide meanwhile


@dataclass(frozen=True)
class OnnxExport:
    """The exported graph files of one model (``int8_path`` None when not asked for)."""

    folder: Path
    fp32_path: Path
    int8_path: Path | None
    exported: bool  # False: found in the cache


def weights_folder(loaded: LoadedFunAsrModel) -> Path:
    """The folder FunASR read the weights from (a local folder or the hub's cache copy)."""
    init_param = loaded.kwargs.get("init_param")
    if init_param:
        return Path(str(init_param)).parent
    return Path(loaded.source)


def weights_identity(folder: Path) -> str:
    """Hash of every file's relative path, size and mtime under ``folder``, the export
    variant and the versions of FunASR and torch (both shape the exported graph)."""
    import funasr

    files: list[tuple[str, int, int]] = []
    for item in sorted(folder.rglob("*"))[:_MAX_IDENTITY_FILES]:
        if item.is_file():
            stat = item.stat()
            files.append((str(item.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    text = json.dumps(
        {
            "files": files,
            "variant": _EXPORT_VARIANT,
            "funasr": getattr(funasr, "__version__", "?"),
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _ZeroPaddedEncoder(torch.nn.Module):
    """An export encoder whose output frames past each item's length are zero.

    The CIF predictor's conv looks one frame past the end: alone, an item sees zeros
    there; in a batch, the encoder's output on padding. FunASR's export graph does not
    mask it; zeroing here (traced into the graph) makes batching invisible in the tokens.
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = encoder

    def forward(self, speech: torch.Tensor, speech_lengths: torch.Tensor) -> Any:
        encoder_out, encoder_out_lens = self.inner(speech=speech, speech_lengths=speech_lengths)
        frames = torch.arange(encoder_out.size(1), device=encoder_out.device)
        valid = frames[None, :] < encoder_out_lens[:, None]
        return encoder_out * valid.unsqueeze(-1).to(encoder_out.dtype), encoder_out_lens


@contextlib.contextmanager
def _torchscript_exporter() -> Iterator[None]:
    original = torch.onnx.export
    torch.onnx.export = functools.partial(original, dynamo=False)
    try:
        yield
    finally:
        torch.onnx.export = original


def _run_funasr_export(loaded: LoadedFunAsrModel, out_dir: Path, *, quantize: bool) -> None:
    """What ``AutoModel.export(type="onnx", quantize=...)`` does, into ``out_dir``."""
    from funasr.utils import export_utils

    model: Any = copy.deepcopy(loaded.module).to("cpu")  # the export rebuilds its modules
    kwargs = copy.deepcopy(loaded.kwargs)
    kwargs.pop("model", None)
    kwargs.update(device="cpu", output_dir=str(out_dir))
    if loaded.model_class != "SenseVoiceSmall":
        rebuild = model.export

        def export_with_zero_padding(**export_kwargs: Any) -> Any:
            rebuilt = rebuild(**export_kwargs)
            for part in rebuilt if isinstance(rebuilt, (list, tuple)) else (rebuilt,):
                if hasattr(part, "predictor"):  # the backbone (not SeACo's hotword embedder)
                    part.encoder = _ZeroPaddedEncoder(part.encoder)
            return rebuilt

        model.export = export_with_zero_padding
    model.eval()
    with torch.no_grad():
        export_utils.export(model=model, data_in=None, quantize=quantize, type="onnx", **kwargs)


def export_onnx(
    loaded: LoadedFunAsrModel, *, int8: bool, cache_dir: Path | None = None
) -> OnnxExport:
    """The ONNX files of ``loaded`` (fp32, and int8 when asked), exported once per weights.

    Concurrent replicas on one machine may both export; each writes into its own
    temporary folder and moves the files in with an atomic rename, so a reader never sees
    a half-written file.
    """
    root = cache_dir or onnx_cache_dir()
    source = weights_folder(loaded)
    folder = root / f"{source.name or 'model'}-{weights_identity(source)}"
    fp32_path, int8_path = folder / FP32_FILE, folder / INT8_FILE
    wanted = [fp32_path] + ([int8_path] if int8 else [])
    exported = False
    if not all(path.is_file() for path in wanted):
        with _export_lock:
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
                with contained_funasr_side_effects(), _torchscript_exporter():
                    _run_funasr_export(loaded, Path(tmp), quantize=int8)
                for name in (FP32_FILE, INT8_FILE):
                    if (Path(tmp) / name).is_file():
                        os.replace(Path(tmp) / name, folder / name)
                for extra in Path(tmp).iterdir():  # e.g. SeACo's model_eb.onnx
                    if extra.is_file() and not (folder / extra.name).exists():
                        shutil.move(str(extra), folder / extra.name)
            exported = True
            logger.info(
                "exported %s to ONNX (%s) in %.1f s: %s",
                source,
                "fp32 + int8" if int8 else "fp32",
                time.perf_counter() - started,
                folder,
            )
    return OnnxExport(
        folder=folder, fp32_path=fp32_path, int8_path=int8_path if int8 else None, exported=exported
    )
