#!/usr/bin/env bash
# `snakemake --profile slurm` looks for ./slurm, then ~/.config/snakemake/slurm (never in
# workflow/): link the shipped profile there, unless a profile of your own already has that name.
# Run by setup.sh; safe to run again (a link to another clone's profile is re-pointed here).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROFILE="$ROOT/workflow/profiles/slurm"
LINK="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/slurm"
if [ ! -e "$LINK" ] || { [ -L "$LINK" ] && [ -f "$LINK/.splitnet" ]; }; then
  mkdir -p "$(dirname "$LINK")"
  ln -sfn "$PROFILE" "$LINK"
elif [ "$(readlink -f "$LINK")" != "$PROFILE" ]; then
  echo "setup: $LINK is your own profile; pass --profile workflow/profiles/slurm to use ours" >&2
fi
