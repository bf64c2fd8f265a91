#!/usr/bin/env bash
# Copy a scale's generated results (tables, figures, metrics, MLflow import counts) from
# results/<scale>/ (ignored, rewritten by every run) to docs/results/<scale>/ (committed reference
# results the README shows; the pipeline never writes there).  Usage: publish-results.sh SCALE
set -euo pipefail
SCALE="${1:?usage: publish-results.sh SCALE}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="$ROOT/results/$SCALE"
DST="$ROOT/docs/results/$SCALE"
for part in tables figures metrics tracking.json; do
  [ -e "$SRC/$part" ] || { echo "publish: $SRC/$part missing: run the pipeline at scale $SCALE first" >&2; exit 2; }
done
rm -rf "$DST.new" && mkdir -p "$DST.new"
cp -r "$SRC/tables" "$SRC/figures" "$SRC/metrics" "$SRC/tracking.json" "$DST.new/"
rm -rf "$DST" && mv "$DST.new" "$DST"
echo "published $SRC -> $DST"
