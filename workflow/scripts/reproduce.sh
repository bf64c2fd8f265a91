#!/usr/bin/env bash
# The main job: set up, then build the whole grid (Tables 1 and 2, figures, MLflow import) at the
# scale in params/pipeline.yaml, or the one given as `--config scale=NAME`. Outputs go to
# results/<scale>/; rerunning after an interruption continues where it stopped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
SCALE="$(python -c 'import yaml; print(yaml.safe_load(open("params/pipeline.yaml"))["scale"])')"
for arg in "$@"; do
  case "$arg" in scale=*) SCALE="${arg#scale=}" ;; esac
done
snakemake --cores all --rerun-incomplete "$@"
echo
cat "results/$SCALE/tables/table1.md" "results/$SCALE/tables/table2.md"
echo "Tables: results/$SCALE/tables/  Figures: results/$SCALE/figures/"
echo "MLflow: MLFLOW_DISABLE_TELEMETRY=true mlflow ui --backend-store-uri sqlite:///results/mlflow.db"
