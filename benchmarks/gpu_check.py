"""The GPU check: every measurement the project needs from a GPU, most important first, in one budget.

Steps, in this order (each gets its own time limit, cut to what is left of ``--budget``):

1. ``step_costs``: ms per training step (baseline, Deep grouping, Hier finetune; batch 90, bf16,
   channels_last), eager and compiled, and the fraction of a measured bf16 matmul peak;
2. ``split_inference``: dense vs split network inference;
3. ``parallel_inference``: branch-parallel inference, one CUDA stream per branch (and worker
   processes, one per GPU);
4. ``paper_pipeline``: a short run of the paper-scale stage commands on CIFAR-100-format data
   the project writes (finetune also through ``--parallel``, one worker per GPU);
5. ``parallel_finetune``: model-parallel finetune steps (only with 2 GPUs or more).

Writes exactly two files under OUT: ``gpu_check.json`` (every step's exit status, seconds and
results) and ``gpu_check.log`` (every step's output). ``--cpu-tiny``: the same steps at toy sizes
on the CPU (the tests).

    python benchmarks/gpu_check.py OUT [--cpu-tiny] [--budget 400]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

BENCH = Path(__file__).resolve().parent
MAX_BUDGET_S = 420  # one device command runs at most 10 minutes, a session has 15 device-minutes


def steps(tiny: bool, gpus: int, tmp: Path) -> list[tuple[str, int, list[str], Path]]:
    """(name, time limit s, argv, result file) of every step, in priority order."""
    py = [sys.executable]
    dev = ["--device", "cpu" if tiny else "cuda"]
    fast = ["--channels-last"] if tiny else ["--bf16", "--channels-last"]
    model = ["--arch", "wrn-10-1", "--image-size", "8", "--num-classes", "12"] if tiny else ["--arch", "wrn-16-8"]
    workers = ["--workers", "2" if tiny else str(max(gpus, 1))]  # one per GPU; two gloo processes on the CPU
    out = {
        name: tmp / f"{name}.json"
        for name in ("step_costs", "split_inference", "parallel_inference", "parallel_finetune")
    }
    plan = [
        (
            "step_costs",
            170,
            [*py, str(BENCH / "step_costs.py"), *dev, "--out", str(out["step_costs"])]
            + (["--tiny", "--no-compile", "--steps", "2", "--warmup", "1"] if tiny else []),
        ),
        (
            "split_inference",
            45,
            [*py, str(BENCH / "split_inference.py"), *dev, "--out", str(out["split_inference"])]
            + (
                ["--batch", "2", "--repeats", "1", "--rounds", "1", "--warmup", "1"]
                if tiny
                else ["--bf16", "--batch", "256", "--repeats", "5", "--rounds", "3"]
            ),
        ),
        (
            "parallel_inference",
            70,
            [
                *py,
                str(BENCH / "parallel_inference.py"),
                *dev,
                *fast,
                *model,
                *workers,
                "--splits",
                "hier",
                "--timeout",
                "60",
                "--out",
                str(out["parallel_inference"]),
            ]
            + (
                ["--batch", "8", "--rounds", "1", "--repeats", "1", "--latency-repeats", "2"]
                if tiny
                else ["--batch", "256", "--rounds", "3", "--repeats", "5", "--latency-repeats", "20"]
            ),
        ),
        (
            "paper_pipeline",
            150,
            [*py, str(BENCH / "paper_pipeline_check.py"), *workers, "--out", str(tmp / "pipeline")]
            + (["--tiny"] if tiny else []),
        ),
    ]
    if gpus >= 2:
        plan.append(
            (
                "parallel_finetune",
                60,
                [
                    *py,
                    str(BENCH / "parallel_finetune.py"),
                    *dev,
                    *fast,
                    *model,
                    *workers,
                    "--splits",
                    "hier",
                    "--timeout",
                    "50",
                    "--out",
                    str(out["parallel_finetune"]),
                ],
            )
        )
    results = {**out, "paper_pipeline": tmp / "pipeline" / "paper_pipeline.json"}
    return [(name, limit, argv, results[name]) for name, limit, argv in plan]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cpu-tiny", action="store_true", help="every step at toy sizes on the CPU (tests)")
    parser.add_argument("--budget", type=int, default=400, help=f"seconds for all steps (at most {MAX_BUDGET_S})")
    args = parser.parse_args()
    if not 30 <= args.budget <= MAX_BUDGET_S:
        parser.error(f"--budget {args.budget}: must be 30..{MAX_BUDGET_S} s")
    gpus = 0 if args.cpu_tiny else torch.cuda.device_count()
    if not args.cpu_tiny and not gpus:
        print("gpu_check: no CUDA device here; use --cpu-tiny for the CPU rehearsal", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log_path, deadline = args.out / "gpu_check.log", time.monotonic() + args.budget
    record: dict = {"check": "gpu_check", "mode": "cpu-tiny" if args.cpu_tiny else "gpu", "gpus": gpus, "steps": []}
    with tempfile.TemporaryDirectory() as tmp, log_path.open("w") as log:
        for name, limit, argv, result in steps(args.cpu_tiny, gpus, Path(tmp)):
            left = int(deadline - time.monotonic())
            entry: dict = {"step": name, "limit_s": min(limit, left)}
            if left < 10:
                entry |= {"exit_code": None, "seconds": 0, "skipped": "out of budget"}
            else:
                log.write(f"\n===== {name}: {' '.join(argv)}\n")
                log.flush()
                start = time.monotonic()
                try:
                    rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=entry["limit_s"]).returncode
                except subprocess.TimeoutExpired:
                    rc = 124
                entry |= {"exit_code": rc, "seconds": round(time.monotonic() - start, 1)}
                if result.is_file():
                    entry["result"] = json.loads(result.read_text())
            record["steps"].append(entry)
            print(f"{name:20s} exit {entry['exit_code']!s:>4s} {entry['seconds']:6.1f} s", flush=True)
    costs = next((s.get("result", {}) for s in record["steps"] if s["step"] == "step_costs"), {})
    record["ms_per_step"] = costs.get("ms_per_step", {})  # what benchmarks/paper_grid_cost.py reads
    record["ok"] = all(s["exit_code"] == 0 for s in record["steps"])
    record["seconds"] = round(sum(s["seconds"] for s in record["steps"]), 1)
    record["machine"] = machine_info()
    (args.out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{'all steps OK' if record['ok'] else 'SOME STEPS FAILED'} in {record['seconds']} s; "
        f"recorded {args.out / 'gpu_check.json'} and {log_path.name}"
    )
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
