"""Rewrite dvc.lock's deps, params and command for the working tree, keeping its recorded outputs.

dvc.lock is committed so that `dvc status` in a fresh clone reports only the (uncommitted) outputs as
missing. After a change to the code or params, run this (the venv's python) and commit dvc.lock:

    .venv/bin/python workflow/scripts/refresh_dvc_lock.py

`dvc commit` needs the stage's outputs to exist, so it runs on a copy of the working tree with
placeholder outputs; only the hashes of the inputs are carried back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGE = "reproduce"


def _copy_working_tree(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # deleted but still in the index: skip
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def _placeholder_outputs(copy: Path) -> None:
    pipeline = yaml.safe_load((copy / "params" / "pipeline.yaml").read_text())
    base = copy / pipeline["results"] / pipeline["scale"]
    for folder in ("tables", "figures"):
        (base / folder).mkdir(parents=True, exist_ok=True)
        (base / folder / "placeholder").write_text("x\n")
    (base / "metrics").mkdir(parents=True, exist_ok=True)
    (base / "metrics" / "summary.json").write_text("{}\n")
    (base / "tracking.json").write_text("{}\n")


def main() -> int:
    dvc = Path(sys.executable).parent / "dvc"
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        _copy_working_tree(copy)
        _placeholder_outputs(copy)
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        subprocess.run([str(dvc), "commit", "--force", "--quiet", STAGE], cwd=copy, env=env, check=True)
        fresh = yaml.safe_load((copy / "dvc.lock").read_text())["stages"][STAGE]
    lock_path = ROOT / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text())
    for key in ("cmd", "deps", "params"):
        lock["stages"][STAGE][key] = fresh[key]
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))
    print(f"dvc.lock: {STAGE} deps, params and cmd refreshed for the working tree")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
