#!/usr/bin/env bash
# Fresh-machine setup: virtualenv, pinned dependencies, default models.
#   bash scripts/setup.sh          # runtime: .venv + models
#   bash scripts/setup.sh --test   # also test tools: espeak-ng and sox (Debian), pytest, openai
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "$want_test" = 1 ] && ! { command -v espeak-ng >/dev/null && command -v sox >/dev/null; }; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  echo "[setup] installing espeak-ng and sox (Debian packages used to make test speech)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq espeak-ng sox >/dev/null
fi

# The web UI and dashboard tests: a real browser (Playwright drives Debian's chromium; its
# own browser download cannot work offline) and a real Prometheus scraping Ray's metrics.
if [ "$want_test" = 1 ] && ! { command -v chromium >/dev/null && command -v prometheus >/dev/null; }; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  echo "[setup] installing chromium and prometheus (Debian packages for tests/ui and tests/serve/test_prometheus.py)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium prometheus >/dev/null
fi

# The result cache's Redis backend test (tests/serve/test_cache.py) starts a real redis-server.
if [ "$want_test" = 1 ] && ! command -v redis-server >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  echo "[setup] installing redis-server (Debian package for the result cache's Redis test)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "${PYTHON:-python3}" -m venv .venv
fi
# torch first, pinned: an unpinned resolution would pull the CUDA build (GBs).
echo "[setup] installing dependencies"
.venv/bin/python -m pip install -q torch==2.13.0
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  # The benchmark's CPU peer (rows 7/8, smoke-tested in the suite): --no-deps, its
  # numpy<=1.26.4 pin clashes with ours and it runs with ours (scripts/bench/harness.py).
  .venv/bin/python -m pip install -q --no-deps funasr-onnx==0.4.3
else
  .venv/bin/python -m pip install -q -e .
fi
.venv/bin/python -m serve_app.tools.provision_models
echo "[setup] done"
