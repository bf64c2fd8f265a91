#!/usr/bin/env bash
# Write constraints.txt: the exact version of every package in .venv (the environment the
# committed results were made with). `SPLITNET_LOCKED=1 bash workflow/scripts/setup.sh` installs
# from it; run records name the same environment by `splitnet.environment` (records.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
{
  echo "# The environment the committed results were made with (pip freeze of .venv, $(date -u +%Y-%m-%d))."
  echo "# Install it: SPLITNET_LOCKED=1 bash workflow/scripts/setup.sh. Regenerate: bash workflow/scripts/freeze-constraints.sh"
  echo "# splitnet.environment of these pins: $(PYTHONPATH=src .venv/bin/python -c 'from splitnet.records import environment_digest; print(environment_digest())')"
  .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^#' | sort -f
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
