#!/usr/bin/env bash
# The GPU check in one command, on a bare GPU machine (benchmarks/gpu_check.py says what it measures):
#
#   bash benchmarks/gpu_check.sh OUT              # on the GPU machine: OUT/gpu_check.{json,log}
#   bash benchmarks/gpu_check.sh --cpu-tiny OUT   # the same steps at toy sizes on the CPU (tests)
#
# It uses the machine's own python3 and torch (PYTHON overrides), puts src/ on the path, and, when
# jsonschema and its dependencies are missing there, installs the wheels that
# `bash benchmarks/fetch_device_wheels.sh` downloaded into .device-wheels/ (carry that folder).
# One global time limit (GPU_CHECK_BUDGET, default 400 s, at most 420) covers every step.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${DEVICE_WHEELS:-.device-wheels}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import jsonschema" 2> /dev/null; then
    if ! compgen -G "$WHEELS/*.whl" > /dev/null; then
        echo "gpu_check: jsonschema is missing and $WHEELS/ holds no wheels: run benchmarks/fetch_device_wheels.sh here and carry $WHEELS" >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$site"
fi
budget=${GPU_CHECK_BUDGET:-400}
# the driver stops its own steps at the budget; this outer limit only catches a hang of the driver
exec timeout --kill-after=10 "$((budget + 15))" "$PY" benchmarks/gpu_check.py --budget "$budget" "$@"
