#!/bin/bash
# Download the wheels scripts/gpu_check.sh needs on a bare GPU machine (scripts/gpu_check_requirements.txt)
# into .whl/, for CPython 3.12 on x86-64 Linux, whatever this machine is. Run where PyPI is reachable, then
# carry .whl/ with the repository to the GPU machine; gpu_check.sh installs them there (no network needed).
#
#   scripts/gpu_check_wheels.sh              # into .whl/
#   PYTHON_VERSION=3.11 scripts/gpu_check_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${DEST:-.whl}
mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1 \
           manylinux_2_31 manylinux_2_34 manylinux_2_35; do
  platforms+=(--platform "${tag}_x86_64")
done
grep -v '^\s*#' scripts/gpu_check_requirements.txt | grep -v '^\s*$' | while read -r requirement; do
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
    --implementation cp "${platforms[@]}" -d "$DEST" "$requirement"
done
echo "$(ls "$DEST"/*.whl | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1))"
