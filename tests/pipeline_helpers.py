"""Helpers for the end-to-end tests: run Snakemake/commands as a user would, in fresh clones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GIT_AUTHOR_NAME": "splitnet-test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "splitnet-test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    # SIGTERM does not stop a hung Snakemake; SIGINT does.
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout), sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def run_shell(command: str, cwd: Path, env: dict | None = None, timeout: int = 1500) -> subprocess.CompletedProcess:
    """A README command line, through bash, as written."""
    return check(
        subprocess.run(
            ["timeout", "-s", "INT", "-k", "30", str(timeout), "bash", "-c", command],
            cwd=cwd,
            env=env or ENV,
            capture_output=True,
            text=True,
        )
    )


def fresh_clone(parent: Path, name: str = "clone") -> Path:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("needs a git checkout with a commit")
    path = parent / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    return path


def restore_editable_install() -> None:
    """setup.sh run in a clone that shares this checkout's virtualenv points the editable install
    at the clone: point it back."""
    subprocess.run(
        [
            str(BIN / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-e",
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )


def job_counts(dry_run_output: str) -> dict[str, int]:
    counts, inside = {}, False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            inside = True
            continue
        if inside:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif counts and not line.startswith("-"):
                break
    return counts
