#!/usr/bin/env bash
# The main job: set up, then build the whole grid (Tables 1 and 2, figures, MLflow import) at the
# scale in params/pipeline.yaml (smoke by default; pass e.g. `--config scale=ci` to override).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
snakemake --cores all "$@"
echo
cat results/tables/table1.md results/tables/table2.md
echo "Tables: results/tables/  Figures: results/figures/  MLflow: mlflow ui --backend-store-uri sqlite:///results/mlflow.db"
