"""End-to-end checks of the single-node SLURM helper and the SLURM Snakemake profile.

Slow (about a minute, needs root; installs slurm-wlm/munge if missing):
    .venv/bin/pytest -q -m slow tests/test_slurm.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SLURM_PROFILE, slurm_cluster  # noqa: F401  (pytest fixture)

pytestmark = pytest.mark.slow


def _squeue_state(job_id: str) -> str:
    """State of a job as squeue still reports it (finished jobs stay for MinJobAge)."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


def test_sbatch_wrap_runs_a_job(slurm_cluster, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "job_id.txt"
    sub = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--job-name",
            "splitnet-test-wrap",
            "--output",
            str(tmp_path / "slurm-%j.log"),
            "--time",
            "1",
            "--mem",
            "100",
            "--wrap",
            f'echo "$SLURM_JOB_ID" > {out}',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = sub.stdout.strip().split(";")[0]
    assert job_id.isdigit(), sub.stdout

    deadline = time.monotonic() + 60
    state = _squeue_state(job_id)
    while state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", ""):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], timeout=30)
            pytest.fail(f"job {job_id} not finished after 60 s (state {state!r})")
        time.sleep(0.5)
        state = _squeue_state(job_id)
    assert state == "COMPLETED", state
    assert out.read_text().strip() == job_id
    assert (tmp_path / f"slurm-{job_id}.log").exists()


SNAKEFILE = """\
localrules: all

rule all:
    input: "cpu_rule.txt", "plain_rule.txt"

# what the pipeline's GPU rules look like at CPU scale: gpu=0, explicit CPUs
rule cpu_rule:
    output: "cpu_rule.txt"
    resources: gpu=0, cpus_per_task=1, mem_mb=200, runtime=5
    shell: 'echo "$SLURM_JOB_ID" > {output}'

# no resources: profile defaults (memory lowered so that small CI runners fit it)
rule plain_rule:
    output: "plain_rule.txt"
    resources: mem_mb=200
    shell: 'echo "$SLURM_JOB_ID" > {output}'
"""


def test_snakemake_profile_submits_to_slurm(slurm_cluster, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    cmd = [
        "timeout", "-s", "INT", "-k", "30", "300",
        sys.executable, "-m", "snakemake",
        "--profile", str(SLURM_PROFILE),
        "--cores", "all",
    ]  # fmt: skip
    t0 = time.monotonic()
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    elapsed = time.monotonic() - t0
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"snakemake rc {run.returncode} after {elapsed:.1f}s:\n{log[-6000:]}"

    job_ids = {}
    for rule in ("cpu_rule", "plain_rule"):
        out = tmp_path / f"{rule}.txt"
        assert out.exists(), log[-4000:]
        job_id = out.read_text().strip()
        # the shell ran inside a SLURM job, not on the submitting host
        assert job_id.isdigit(), f"{rule}: no SLURM job id in output ({job_id!r})"
        assert _squeue_state(job_id) == "COMPLETED"
        # slurm-keep-successful-logs: true keeps the logs of successful jobs
        slurm_log = tmp_path / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{job_id}.log"
        assert slurm_log.exists(), sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.log"))
        job_ids[rule] = job_id
    assert job_ids["cpu_rule"] != job_ids["plain_rule"]
    print(f"snakemake --profile slurm: {elapsed:.1f}s, jobs {job_ids}")
