"""The paper grid's cost on paper: SGD steps per rule and the makespan on 1 and 8 GPUs.

Reads the real DAG (``snakemake -n`` of the scale, as ``snakemake --config scale=paper`` would
run it), counts each job's SGD steps from its resolved config (epochs x steps per epoch), prices
them with a per-step time per kind of step, and list-schedules the jobs on N GPUs (one GPU per job,
longest remaining path first), so that a cluster user can size the run and SLURM's time limits.

The default per-step times are *estimates*, not measurements (no GPU has run the paper scale
yet): a plain or finetune step of WRN-16-8 at batch 90 is 836 GFLOP, 0.85 ms at an H200's bf16
dense peak and ~2.3 ms at the 37 % of peak that airbench reaches; a grouping step is host-bound,
~10 ms, at the ~1,000 eager ops it launches (issue 19). ``--ms-per-step grouping=4.1`` overrides
one; ``--gpu-check OUT/gpu_check.json`` takes every kind the GPU check measured.

    python benchmarks/paper_grid_cost.py [--scale paper] [--gpus 1 8] [--out benchmarks/results/paper_grid_cost.json]
"""

from __future__ import annotations

import argparse
import heapq
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from splitnet.config import load_registry, resolve
from splitnet.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
# ms per SGD step of WRN-16-8, batch 90, bf16 (estimates: see the module docstring)
ESTIMATED_MS = {"plain": 2.3, "grouping": 10.0, "ssl": 2.5, "finetune": 2.3}
# seconds per job besides its SGD steps: data preparation, evaluation (10k test images,
# throughput), the cut, the reports; plus a start-up per job (interpreter, data onto the GPU)
FIXED_S = {"prepare_data": 120.0, "split": 15.0, "evaluate": 30.0}
START_S = 20.0
TRAIN_IMAGES = {"cifar100": 50_000}  # the official training split (the validation images come out of it)
STAGE_OF_RULE = {"train_baseline": "train", "learn_groups": "group", "finetune": "finetune"}


@dataclass
class Job:
    rule: str
    wildcards: dict[str, str]
    inputs: list[str]
    outputs: list[str]
    steps: int = 0
    kind: str = ""
    seconds: float = 0.0
    after: set[int] = field(default_factory=set)


def dry_run(scale: str, results: Path) -> list[Job]:
    """The jobs of ``snakemake -n`` for ``scale`` (from scratch, under ``results``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--config", f"scale={scale}", f"results={results}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        fields_ = dict(re.findall(r"^\s+(input|output|wildcards): (.*)$", block, flags=re.M))
        wildcards = dict(part.split("=", 1) for part in fields_.get("wildcards", "").split(", ") if "=" in part)
        split_files = lambda text: [f for f in text.split(", ") if f]  # noqa: E731
        jobs.append(
            Job(head.group(1), wildcards, split_files(fields_.get("input", "")), split_files(fields_.get("output", "")))
        )
    return jobs


def price(jobs: list[Job], registry: dict, scale: str, ms_per_step: dict[str, float]) -> None:
    """Each job's SGD steps, step kind and seconds; its dependencies (inputs another job writes)."""
    writer = {out: i for i, job in enumerate(jobs) for out in job.outputs}
    for job in jobs:
        job.after = {writer[f] for f in job.inputs if f in writer}
        stage = STAGE_OF_RULE.get(job.rule)
        if stage is not None:
            exp = job.wildcards.get("exp") or job.wildcards["baseline"]
            cfg = resolve(registry, exp, scale, int(job.wildcards["seed"]))
            section = "ssl" if stage == "group" and cfg["method"] == "ssl" else stage
            data = cfg["data"]
            if data["source"] not in TRAIN_IMAGES or data.get("train_per_class"):
                raise SystemExit(f"{scale}: only full CIFAR-100 scales are priced (data.source {data['source']})")
            per_epoch = (TRAIN_IMAGES[data["source"]] - data["val_size"]) // cfg["engine"]["batch_size"]
            job.steps = per_epoch * cfg[section]["schedule"]["epochs"]
            job.kind = {"train": "plain", "group": "grouping", "ssl": "ssl", "finetune": "finetune"}[section]
            job.seconds = START_S + job.steps * ms_per_step[job.kind] / 1000
        elif job.rule in FIXED_S:
            job.seconds = START_S + FIXED_S[job.rule]


def makespan(jobs: list[Job], gpus: int) -> float:
    """List scheduling on ``gpus`` GPUs, longest remaining path first (one GPU per job)."""
    remaining: dict[int, float] = {}
    children: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    for i, job in enumerate(jobs):
        for parent in job.after:
            children[parent].append(i)

    def path(i: int) -> float:
        if i not in remaining:
            remaining[i] = jobs[i].seconds + max((path(c) for c in children[i]), default=0.0)
        return remaining[i]

    waiting = {i: len(job.after) for i, job in enumerate(jobs)}
    ready = [(-path(i), i) for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []  # (finish time, job)
    now, free = 0.0, gpus
    while ready or running:
        while ready and free:
            _, i = heapq.heappop(ready)
            heapq.heappush(running, (now + jobs[i].seconds, i))
            free -= 1
        now, done = heapq.heappop(running)
        free += 1
        for child in children[done]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (-path(child), child))
    return now


def summary(jobs: list[Job], gpus: list[int], ms_per_step: dict[str, float]) -> dict:
    rules: dict[str, dict[str, float]] = {}
    for job in jobs:
        entry = rules.setdefault(job.rule, {"jobs": 0, "sgd_steps": 0, "gpu_hours": 0.0})
        entry["jobs"] += 1
        entry["sgd_steps"] += job.steps
        entry["gpu_hours"] += job.seconds / 3600
    return {
        "ms_per_step": ms_per_step,
        "per_rule": rules,
        "sgd_steps": sum(job.steps for job in jobs),
        "gpu_hours": sum(job.seconds for job in jobs) / 3600,
        "makespan_hours": {str(n): makespan(jobs, n) / 3600 for n in gpus},
        "longest_job_hours": max(job.seconds for job in jobs) / 3600,
    }


def markdown(result: dict) -> str:
    lines = ["| rule | jobs | SGD steps | GPU-hours |", "|---|---|---|---|"]
    for rule, entry in sorted(result["per_rule"].items(), key=lambda kv: -kv[1]["gpu_hours"]):
        if entry["gpu_hours"] < 0.005:  # the reports and the `all` target: seconds
            continue
        lines.append(f"| {rule} | {entry['jobs']} | {entry['sgd_steps']:,} | {entry['gpu_hours']:.2f} |")
    lines.append(f"| **total** | | **{result['sgd_steps']:,}** | **{result['gpu_hours']:.2f}** |")
    spans = ", ".join(f"{n} GPU{'s' * (n != '1')}: {h:.2f} h" for n, h in result["makespan_hours"].items())
    return "\n".join(lines) + f"\n\nMakespan: {spans}; the longest job {result['longest_job_hours']:.2f} h.\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="paper")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--ms-per-step", nargs="*", default=[], help="KIND=MS overrides (plain, grouping, ssl, finetune)"
    )
    parser.add_argument("--gpu-check", type=Path, help="a gpu_check.json whose measured ms/step replace the estimates")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_grid_cost.json")
    args = parser.parse_args()
    ms = dict(ESTIMATED_MS)
    source = "estimates (module docstring)"
    if args.gpu_check:
        measured = json.loads(args.gpu_check.read_text()).get("ms_per_step", {})
        ms.update({k: float(v) for k, v in measured.items() if k in ms})
        source = f"measured by {args.gpu_check.name} where given"
    for item in args.ms_per_step:
        kind, _, value = item.partition("=")
        if kind not in ms:
            parser.error(f"--ms-per-step {item}: kind must be one of {', '.join(ms)}")
        ms[kind] = float(value)
        source += f"; {kind} set on the command line"
    with tempfile.TemporaryDirectory() as tmp:
        jobs = dry_run(args.scale, Path(tmp))
    price(jobs, load_registry(ROOT / "params"), args.scale, ms)
    result = {"benchmark": "paper_grid_cost", "scale": args.scale, "ms_per_step_source": source}
    result |= summary(jobs, args.gpus, ms) | {"machine": machine_info()}
    atomic_write_json(args.out, result)
    print(markdown(result))
    print(f"recorded {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
