#!/usr/bin/env bash
# The test job: set up (plus SLURM packages when root), then every test, slow end-to-end ones
# included (pipeline at ci scale through Snakemake, DVC in a fresh clone, and a real SLURM).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
apt_install slurm-wlm munge texlive-latex-base texlive-latex-recommended || echo "test: SLURM/LaTeX packages unavailable; the SLURM test will skip, the LaTeX test fails under CI (pdflatex, booktabs)" >&2
ruff check .            # lint (rules in pyproject.toml)
ruff format --check .   # one formatting
mypy                    # types of src/splitnet (pyproject.toml [tool.mypy])
python -m pytest -m "slow or not slow" "$@"
