#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (Python >= 3.11) for SplitNet: system packages (when
# root), the virtual environment .venv with the package and its pipeline/test extras.
# Sourced by reproduce.sh and test.sh; safe to run again (only missing pieces are installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

apt_install() {  # apt_install PKG... : install the Debian packages that are missing (root only)
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install: sudo apt-get install -y ${missing[*]}" >&2
    return 1
  fi
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

# Fashion-MNIST (the offline default dataset), venv support and git (DVC needs it).
apt_install dataset-fashion-mnist python3-venv git

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python >= 3.11 required ($("$PY" --version))" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
# torch/torchvision come from PyPI (lower bounds only); everything else from pyproject.toml.
# SPLITNET_LOCKED=1: the exact versions the committed results were made with (constraints.txt).
constraints=()
if [ "${SPLITNET_LOCKED:-0}" = 1 ]; then
  constraints=(--constraint constraints.txt)
  echo "setup: installing the versions of constraints.txt"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "${constraints[@]}" -e ".[pipeline,test]"
export PATH="$ROOT/.venv/bin:$PATH"

bash "$ROOT/workflow/scripts/link-slurm-profile.sh"
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
