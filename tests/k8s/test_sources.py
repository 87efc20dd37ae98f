"""k8s/: one source of truth (serveConfigV2 is the ray_configs file) and the kustomize build."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.helpers import (
    EXTRA_KUSTOMIZATIONS,
    K8S,
    OVERLAYS,
    REPO,
    SERVICE_OVERLAYS,
    built,
    only,
    render,
    serve_config,
)

# -- one source of truth -----------------------------------------------------------------


def test_generated_serve_config_patches_are_current():
    stale = [str(p.relative_to(REPO)) for p in render.stale_files()]
    assert not stale, f"stale generated files {stale}: run `python k8s/render.py`"


@pytest.mark.parametrize("overlay", SERVICE_OVERLAYS)
def test_serve_config_v2_is_the_ray_configs_file(overlay):
    source = render.SERVE_CONFIG_SOURCES[overlay]
    expected = yaml.safe_load((REPO / source.serve_config).read_text())
    if source.overrides:
        overrides = yaml.safe_load((REPO / source.overrides).read_text())
        expected = render.merge_overrides(expected, overrides)
    assert serve_config(overlay) == expected


def test_gpu_overlays_serve_the_gpu_files_verbatim():
    for overlay, source in render.SERVE_CONFIG_SOURCES.items():
        if overlay.startswith("gpu-"):
            assert source.overrides is None
            text = only(overlay, "RayService")["spec"]["serveConfigV2"]
            assert text == (REPO / source.serve_config).read_text().rstrip("\n") + "\n"
    gpu_files = {p.name for p in (REPO / "ray_configs").glob("serve_*_gpu.yaml")}
    served = {Path(s.serve_config).name for s in render.SERVE_CONFIG_SOURCES.values()}
    assert gpu_files <= served, f"GPU Serve configs without an overlay: {gpu_files - served}"


def test_merge_overrides_refuses_an_unknown_name():
    base = {"apps": [{"name": "asr", "x": 1}]}
    assert render.merge_overrides(base, {"apps": [{"name": "asr", "x": 2}]}) == {
        "apps": [{"name": "asr", "x": 2}]
    }
    with pytest.raises(ValueError, match="no item named 'asrr'"):
        render.merge_overrides(base, {"apps": [{"name": "asrr", "x": 2}]})


# -- kustomize -----------------------------------------------------------------------------


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("target", OVERLAYS + EXTRA_KUSTOMIZATIONS)
def test_fallback_build_matches_kustomize(target):
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: render.py's build is unchecked")
    directory = K8S / "overlays" / target if "/" not in target else K8S / target
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    ours = sorted(built(target), key=key)
    theirs = sorted((r for r in yaml.safe_load_all(result.stdout) if r), key=key)
    assert ours == theirs


def test_fallback_build_fails_on_a_wrong_index(tmp_path):
    # The `test` ops guard index-based patches: a reordered base must not patch the wrong group.
    overlay = tmp_path / "o"
    shutil.copytree(K8S / "overlays" / "cpu-dev", overlay)
    (overlay / "kustomization.yaml").write_text(
        (overlay / "kustomization.yaml").read_text().replace("../../base", str(K8S / "base"))
    )
    patch = overlay / "cluster.yaml"
    patch.write_text(patch.read_text().replace("value: gpu-workers", "value: cpu-workers", 1))
    with pytest.raises(ValueError, match="test failed"):
        render.build(overlay)
