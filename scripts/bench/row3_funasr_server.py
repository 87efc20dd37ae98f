"""Row 3: FunASR's OpenAI-compatible ``funasr-server`` on the same model files, under C
concurrent HTTP clients (FunASR models only: it cannot serve CTranslate2).
Timed: first request sent -> last response, the server up and warmed up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.common.service import free_port, healthy, wait_until
from serve_app.tools.models import ModelSpec

from .harness import _corpus, _http_load, _noise_wav


def row_funasr_server(spec: dict) -> dict:
    """Row 3: ``funasr-server`` on the same model files, under C concurrent clients."""
    import httpx

    model = ModelSpec(**spec["model"])
    corpus = _corpus(spec)
    tmp = Path(spec["tmp"])
    # funasr-server's VAD pipeline asks for "fsmn-vad" by hub name; FunASR resolves it to
    # this ModelScope id and skips the download when that path exists relative to the
    # working directory (download_from_ms: `if not os.path.exists(model_or_path)`), so the
    # server runs offline from a folder holding our fsmn-vad files under that id.
    seeded = tmp / "funasr-server-cwd"
    vad_dir = seeded / "iic" / "speech_fsmn_vad_zh-cn-16k-common-pytorch"
    vad_dir.parent.mkdir(parents=True, exist_ok=True)
    if not vad_dir.exists():
        vad_dir.symlink_to(spec["vad_path"], target_is_directory=True)
    port = free_port()
    exe = shutil.which("funasr-server", path=str(Path(sys.executable).parent)) or "funasr-server"
    cmd = [
        exe,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        spec["device"],
        "--model-path",
        model.path,
    ]
    log = open(tmp / "funasr-server.log", "w")  # closed in the finally below
    proc = subprocess.Popen(
        cmd,
        cwd=seeded,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MODELSCOPE_CACHE": str(seeded / "ms-cache")},
    )
    url = f"http://127.0.0.1:{port}"
    # With --model-path the server answers model "custom" WITHOUT VAD (one forward over the
    # whole file); the model field "sensevoice" selects its VAD config (fsmn-vad,
    # max_single_segment_time 30 s) with --model-path's weights: that is the server's own
    # long-audio path, comparable to rows 2 and 4.
    model_field = "sensevoice"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"funasr-server exited with {proc.returncode}")
            return healthy(url, "/health")

        wait_until(up, spec["startup_timeout_s"], "funasr-server")
        warm = _noise_wav(tmp)
        resp = httpx.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("w.wav", warm.read_bytes(), "audio/wav")},
            data={"model": model_field},
            timeout=spec["startup_timeout_s"],
        )
        resp.raise_for_status()
        result = _http_load(url, corpus, spec, model_field)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    if result.errors:
        raise RuntimeError(f"funasr-server errors: {result.errors[:3]}")
    return {
        "wall_s": result.wall_s,
        "audio_s": corpus.total_s,
        "latencies_s": result.latencies,
        "batch_size_counts": None,
        "padding_efficiency": None,
        "notes": [
            "funasr-server --model-path <same folder>, model field 'sensevoice' = its VAD path",
            "it calls AutoModel.generate(batch_size=1) inside an async handler: requests run "
            "one at a time; on CPU AutoModel also disables batch_size_s",
            "AutoModel's default ncpu=4 torch threads (not settable from the CLI)",
        ],
        "timing_scope": "first request sent -> last response (server up, warmed up)",
    }
