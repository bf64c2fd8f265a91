#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (jsonschema and its dependencies; its image has torch,
# numpy, scipy, PyYAML, matplotlib...) into .device-wheels/ (git-ignored), for its Python:
#
#   bash benchmarks/fetch_device_wheels.sh [PYTHON_VERSION] [DIR]   # default 3.12 .device-wheels
#
# Then carry DIR in the device call; benchmarks/gpu_check.sh installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
dir=${2:-.device-wheels}
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do platforms+=(--platform "$p"); done
# jsonschema and its runtime dependencies (attrs and typing-extensions are in the image; rpds-py
# is compiled, hence the platform), at the versions installed here
specs=$("$PY" - <<'PYEOF'
from importlib import metadata
for name in ("jsonschema", "jsonschema-specifications", "referencing", "rpds-py"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
PYEOF
)
# shellcheck disable=SC2086  # one requirement per word
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    "${platforms[@]}" -d "$dir" $specs
ls "$dir"
