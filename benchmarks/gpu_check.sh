#!/usr/bin/env bash
# One-command GPU check (< 8 min on one GPU), bf16 + channels_last:
#   1. training throughput (benchmarks/train_throughput.py, WRN-16-8)
#   2. split inference (benchmarks/split_inference.py)
#   3. branch-parallel inference: CUDA streams and worker processes (parallel_inference.py)
#   4. finetune step time, sequential vs model-parallel (parallel_finetune.py)
#   5. a few hundred steps of the paper-scale pipeline on CIFAR-100-format data the project
#      writes, finetune sequential and model-parallel (paper_pipeline_check.py)
# Every step runs even when an earlier one fails; each writes its JSON under OUT, and
# OUT/summary.json lists every step's exit status and seconds with machine info.
#
#   bash benchmarks/gpu_check.sh [OUT]          # default OUT: benchmarks/results/gpu_check
#   bash benchmarks/gpu_check.sh --cpu-tiny OUT # the same steps at toy sizes on the CPU (tests)
#
# PYTHON (default: .venv/bin/python if present, else python3) runs the steps.
set -uo pipefail
cd "$(dirname "$0")/.."

tiny=0
if [[ "${1:-}" == "--cpu-tiny" ]]; then
    tiny=1
    shift
fi
OUT=$(realpath -m "${1:-benchmarks/results/gpu_check}")
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
mkdir -p "$OUT/logs"
: > "$OUT/steps.tsv"

if (( tiny )); then
    dev=(--device cpu)
    fast=(--channels-last)
    model=(--arch wrn-10-1 --image-size 8)
    train=("${model[@]}" --batch 8 --steps 2 --warmup 1)
    split_inf=(--batch 2 --repeats 1 --rounds 1 --warmup 1)
    par=("${model[@]}" --num-classes 12 --splits hier --batch 8 --rounds 1 --repeats 1 --warmup 1)
    par_inf=(--latency-repeats 2)
    pipeline=(--tiny)
else
    dev=(--device cuda)
    fast=(--bf16 --channels-last)
    model=(--arch wrn-16-8)
    train=("${model[@]}" --batch 128 --steps 30 --warmup 5)
    split_inf=(--batch 256 --repeats 5 --rounds 3)
    par=("${model[@]}" --batch 256 --rounds 3 --repeats 5 --warmup 2)
    par_inf=(--latency-repeats 20)
    pipeline=()
fi
# split_inference.py measures both memory formats itself: it takes only the bf16 flag.
split_fast=()
if (( ! tiny )); then
    split_fast=(--bf16)
fi

step() {  # step NAME TIMEOUT_S COMMAND...: run it, log it, record exit status and seconds
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$OUT/steps.tsv"
    printf '%-20s exit %3s  %4s s\n' "$name" "$rc" "$((SECONDS - start))"
}

step train_throughput 150 "$PY" benchmarks/train_throughput.py "${dev[@]}" "${fast[@]}" "${train[@]}" \
    --out "$OUT/train_throughput.json"
step split_inference 90 "$PY" benchmarks/split_inference.py "${dev[@]}" "${split_fast[@]}" "${split_inf[@]}" \
    --out "$OUT/split_inference.json"
step parallel_inference 120 "$PY" benchmarks/parallel_inference.py "${dev[@]}" "${fast[@]}" "${par[@]}" \
    "${par_inf[@]}" --timeout 110 --out "$OUT/parallel_inference.json"
step parallel_finetune 90 "$PY" benchmarks/parallel_finetune.py "${dev[@]}" "${fast[@]}" "${par[@]}" \
    --timeout 80 --out "$OUT/parallel_finetune.json"
step paper_pipeline 240 "$PY" benchmarks/paper_pipeline_check.py "${pipeline[@]}" --out "$OUT/paper_pipeline"

"$PY" - "$OUT" "$tiny" <<'EOF'
import json, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from machine import machine_info

out, tiny = Path(sys.argv[1]), sys.argv[2] == "1"
steps = [dict(zip(("step", "exit_code", "seconds"), line.split("\t")))
         for line in (out / "steps.tsv").read_text().splitlines()]
for s in steps:
    s["exit_code"], s["seconds"] = int(s["exit_code"]), int(s["seconds"])
    s["log"] = f"logs/{s['step']}.log"
summary = {"check": "gpu_check", "mode": "cpu-tiny" if tiny else "gpu", "ok": all(s["exit_code"] == 0 for s in steps),
           "seconds": sum(s["seconds"] for s in steps), "steps": steps, "machine": machine_info()}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"{'all steps OK' if summary['ok'] else 'SOME STEPS FAILED'} in {summary['seconds']} s; recorded {out / 'summary.json'}")
sys.exit(0 if summary["ok"] else 1)
EOF
