"""A throwaway single-node SLURM cluster for tests.

Usage in a test module (tests/ is on sys.path under pytest's default import mode)::

    from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

    @pytest.mark.slow
    def test_something(slurm_cluster):
        ...  # sbatch/squeue/snakemake --profile workflow/profiles/slurm work here

The fixture runs ``workflow/scripts/slurm-up.sh`` (installing ``slurm-wlm munge`` with
apt-get if missing) and, at the end of the session, ``workflow/scripts/slurm-down.sh``.
It skips the test when the packages cannot be installed, or when not running as root
and no cluster is up (a cluster started beforehand with ``sudo slurm-up.sh`` is used
by unprivileged test runs).
A cluster that was already running before the tests (started by an earlier
``slurm-up.sh``, e.g. in a CI step) is reused and left running.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_UP = REPO / "workflow" / "scripts" / "slurm-up.sh"
SLURM_DOWN = REPO / "workflow" / "scripts" / "slurm-down.sh"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"

# exit codes of slurm-up.sh
_NOT_USABLE = 2
_NO_PACKAGES = 3


@dataclass(frozen=True)
class SlurmCluster:
    """What a test gets from the fixture."""

    status: str  # slurm-up.sh's status line
    partition: str = "debug"
    profile: Path = SLURM_PROFILE
    started_here: bool = True


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "single-node SLURM needs Linux"
    if os.geteuid() != 0:
        return "starting SLURM (munged/slurmctld/slurmd) needs root"
    return None


def _running_cluster_status() -> str | None:
    """Status line if a usable cluster with partition ``debug`` is already up."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-p", "debug", "-o", "%t %c %m %N"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = out.stdout.split()
    if out.returncode != 0 or len(fields) < 4:
        return None
    state, cpus, mem, node = fields[:4]
    if state.rstrip("*~#!%$@^-") not in ("idle", "mix", "alloc"):
        return None
    return f"slurm up: partition debug, node {node} {state} ({cpus} cpus, {mem} MB) (already running)"


@contextmanager
def running_slurm(timeout_s: int = 900) -> Iterator[SlurmCluster]:
    """Start SLURM with slurm-up.sh, yield, stop it with slurm-down.sh.

    Calls pytest.skip() when the cluster cannot be had on this machine (not root,
    packages not installable, a foreign SLURM already running) and pytest.fail() when
    the daemons do not come up.
    """
    reason = _skip_reason()
    if reason:
        # e.g. CI ran `sudo workflow/scripts/slurm-up.sh` and pytest runs unprivileged
        status = _running_cluster_status()
        if status is None:
            pytest.skip(reason)
        yield SlurmCluster(status=status, started_here=False)
        return
    try:
        up = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        subprocess.run(["bash", str(SLURM_DOWN)], capture_output=True, timeout=300)
        pytest.fail(f"slurm-up.sh did not finish in {timeout_s}s: {exc.stderr!s}")
    out = (up.stdout + up.stderr).strip()
    if up.returncode == _NO_PACKAGES:
        pytest.skip(f"slurm-wlm/munge cannot be installed here: {out[-500:]}")
    if up.returncode == _NOT_USABLE:
        pytest.skip(f"SLURM cannot be started here: {out[-500:]}")
    if up.returncode != 0:
        pytest.fail(f"slurm-up.sh failed (rc {up.returncode}):\n{out[-4000:]}")
    status = up.stdout.strip().splitlines()[-1] if up.stdout.strip() else out
    started_here = "already running" not in status
    try:
        yield SlurmCluster(status=status, started_here=started_here)
    finally:
        if started_here:
            down = subprocess.run(["bash", str(SLURM_DOWN)], capture_output=True, text=True, timeout=300)
            if down.returncode != 0:
                print(f"slurm-down.sh rc {down.returncode}: {down.stdout}{down.stderr}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Session-wide single-node SLURM (partition ``debug``, no accounting)."""
    with running_slurm() as cluster:
        yield cluster
