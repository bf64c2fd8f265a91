"""Wall time of the whole grid at one scale, through the same Snakemake command the README runs.

    python benchmarks/pipeline_wall_time.py --scale cpu [--results results] [--out benchmarks/results/...]

Records the wall time, the job count, the machine (benchmarks/machine.py) and how loaded it was:
the 1-minute load average sampled every 30 s during the run (the machine is shared; a load above
the core count means other work competed for the cores). Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

REPO = Path(__file__).resolve().parents[1]


def _sample_load(samples: list[float], stop: threading.Event, every_s: float = 30.0) -> None:
    while not stop.wait(every_s):
        samples.append(os.getloadavg()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--results", default="results", help="the pipeline's results directory")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/pipeline-<scale>.json")
    args = parser.parse_args()
    out = Path(args.out or REPO / "benchmarks" / "results" / f"pipeline-{args.scale}.json")
    command = [
        "snakemake",
        "--cores",
        "all",
        "--rerun-incomplete",
        "--config",
        f"scale={args.scale}",
        f"results={args.results}",
    ]
    samples: list[float] = [os.getloadavg()[0]]
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_load, args=(samples, stop), daemon=True)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    sampler.start()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    stop.set()
    samples.append(os.getloadavg()[0])
    jobs = sum(1 for line in proc.stderr.splitlines() if line.strip().startswith("Finished job"))
    record = {
        "benchmark": "pipeline_wall_time",
        "command": " ".join(command),
        "scale": args.scale,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "wall_min": round(wall / 60, 2),
        "exit_code": proc.returncode,
        "jobs_finished": jobs,
        "load_1min": {
            "start": samples[0],
            "end": samples[-1],
            "max": max(samples),
            "mean": round(sum(samples) / len(samples), 2),
            "samples_every_30s": samples,
        },
        "machine": machine_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("scale", "wall_min", "exit_code", "jobs_finished", "load_1min")}))
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
