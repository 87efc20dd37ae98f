#!/usr/bin/env bash
# Download the wheels the GPU check (python -m scripts.gpu_check) needs on the GPU machine
# into .whl/ (gitignored), for CPython 3.12 manylinux x86_64, exactly as the device README
# says (--no-deps: every needed package is named in scripts/gpu_check/requirements.txt).
#
#   bash scripts/gpu_check/wheels.sh                 # -> .whl/ for Python 3.12
#   PYTHON_VERSION=3.11 DEST=/tmp/w311 bash scripts/gpu_check/wheels.sh   # another Python
#
# Fails when the wheels exceed MAX_MIB (default 40: a device run carries at most 64 MiB,
# working tree included).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
DEST="${DEST:-.whl}"
MAX_MIB="${MAX_MIB:-40}"
PIP="${PIP:-python3 -m pip}"
mkdir -p "$DEST"
grep -Ev '^\s*(#|$)' scripts/gpu_check/requirements.txt | while read -r req; do
    $PIP download --quiet --no-deps --only-binary=:all: \
        --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$DEST" "$req" 2>&1 | grep -v "is ignored" || true
done
# One version of each package: two stop the whole install on the device.
names=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort)
dupes=$(echo "$names" | uniq -d)
if [[ -n "$dupes" ]]; then
    echo "[gpu-check-wheels] more than one wheel of: $dupes (remove the stale ones)" >&2
    exit 1
fi
expected=$(grep -Evc '^\s*(#|$)' scripts/gpu_check/requirements.txt)
found=$(echo "$names" | wc -l)
if [[ "$found" -ne "$expected" ]]; then
    echo "[gpu-check-wheels] $found wheels in $DEST, $expected requirements" >&2
    exit 1
fi
bytes=$(cat "$DEST"/*.whl | wc -c)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "[gpu-check-wheels] $found wheels, $bytes bytes (~${mib} MiB) in $DEST"
if (( mib > MAX_MIB )); then
    echo "[gpu-check-wheels] over the ${MAX_MIB} MiB limit" >&2
    exit 1
fi
