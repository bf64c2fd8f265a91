"""Every command in the README's shell blocks works as written, on a fresh clone.

`README_COMMANDS` maps each command to where it is run: a README command that no test runs
fails `test_every_readme_command_is_run_by_a_test`. Heavy commands run at the `ci` scale where
the README says which scale to pick (`--config scale=...`); see each test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from pipeline_helpers import BIN, ROOT, restore_editable_install, run_shell

README = ROOT / "README.md"

# command (as in the README, comments stripped) -> the test that runs it
README_COMMANDS = {
    "bash workflow/scripts/reproduce.sh": "test_main_command_trains_and_fills_mlflow (scale=ci)",
    "bash workflow/scripts/test.sh": ".ci/run itself",
    "source .venv/bin/activate": "test_main_command_trains_and_fills_mlflow",
    "snakemake --unlock": "test_unlock_after_a_killed_run",
    "snakemake --cores all --profile slurm --config scale=paper": "test_pipeline.test_slurm_profile_as_written (ci grid) + test_paper_command_plans_every_job",
    "snakemake --cores all --profile slurm --config scale=paper_fp32": "test_pipeline.test_paper_scale_dag_builds_for_every_row[paper_fp32] (the same profile as scale=paper)",
    "snakemake --cores all --config extra_seeds=True": "test_reference_results_commands_plan_their_jobs (-n: ~2 h)",
    "snakemake --cores all --config gap_study=True": "test_reference_results_commands_plan_their_jobs (-n: hours)",
    "snakemake --cores all --config extended_study=True": "test_reference_results_commands_plan_their_jobs (-n)",
    "dvc repro": "test_pipeline.test_dvc_commands_of_the_readme",
    "dvc exp run --temp -S params/pipeline.yaml:scale=ci": "test_pipeline.test_dvc_commands_of_the_readme",
    "dvc exp run --temp -S 'params/experiments.yaml:experiments.deep.group.schedule.weight_decay=0.0005'": "test_pipeline.test_dvc_commands_of_the_readme",
    "dvc exp show --md": "test_pipeline.test_dvc_commands_of_the_readme",
    "dvc metrics show": "test_pipeline.test_dvc_commands_of_the_readme",
    "MLFLOW_DISABLE_TELEMETRY=true mlflow ui --backend-store-uri sqlite:///results/mlflow.db": "test_mlflow_ui_command_serves_the_runs",
}
STAGE_COMMAND = re.compile(r"^splitnet (prepare-data|train|learn-groups|split|finetune|evaluate|summary) ")


def readme_commands() -> list[str]:
    """Command lines of the README's ```bash blocks, without comments."""
    commands, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside:
            command = re.split(r"\s+#", " " + line, maxsplit=1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands()
    untested = [c for c in commands if c not in README_COMMANDS and not STAGE_COMMAND.match(c)]
    assert not untested, f"README commands no test runs: {untested}"
    stale = [c for c in README_COMMANDS if c not in commands]
    assert not stale, f"tested commands no longer in the README: {stale}"


def _run(command: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return run_shell(command, cwd, env=env)


@pytest.fixture(scope="module")
def clone(main_run):
    """The fresh clone the main command ran in (conftest.main_run)."""
    return main_run


@pytest.mark.slow
def test_main_command_trains_and_fills_mlflow(main_run):
    path = main_run["path"]
    assert "Table 1" in main_run["stdout"] and "missing" not in (path / "results/ci/tables/table1.md").read_text()
    assert (path / ".venv/bin/activate").is_file()
    # setup linked the SLURM profile so that `--profile slurm` finds it
    assert (main_run["home"] / ".config/snakemake/slurm/config.yaml").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("splitnet/ci/table1")
    assert experiment is not None and len(client.search_runs([experiment.experiment_id])) > 11
    status = subprocess.run(["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True).stdout
    assert status.strip() in ("", "?? .venv"), status


@pytest.mark.slow
def test_stage_commands_as_written(clone):
    path = clone["path"]
    commands = [c for c in readme_commands() if STAGE_COMMAND.match(c)]
    assert len(commands) == 7
    for command in commands:
        _run(command, path, env=clone["env"])
    metrics = json.loads((path / "results/smoke/runs/deep/seed_0/evaluate/metrics.json").read_text())
    assert metrics["params_reduced_pct"] > 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_ui_command_serves_the_runs(clone):
    (command,) = [c for c in readme_commands() if " mlflow ui " in f" {c} "]
    port = _free_port()
    env = {**clone["env"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        ["bash", "-c", f"{command} --port {port} --workers 1"],
        cwd=clone["path"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow ui did not come up"
            time.sleep(0.5)
        body = json.dumps({"max_results": 100}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            names = {e["name"] for e in json.load(r)["experiments"]}
        assert {"splitnet/ci/table1", "splitnet/ci/table2"} <= names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.slow
def test_unlock_after_a_killed_run(clone):
    """kill -9 of the whole run (Snakemake and its job, mid-training): the README's recovery,
    `snakemake --unlock` then the main command again, finishes the grid. (Snakemake 9.x leaves
    no lock behind in this case; older versions and other kills do, hence the README's step.)"""
    path, env = clone["path"], clone["env"]
    # Final outputs missing too: Snakemake regenerates missing intermediates only for a target it must build.
    for done in ("results/ci/runs/baseline", "results/ci/tables", "results/ci/metrics"):  # every seed's baseline
        shutil.rmtree(path / done, ignore_errors=True)
    proc = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "1", "--config", "scale=ci"],
        cwd=path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = path / "results/ci/logs/baseline/seed_0/train.log"
    deadline = time.monotonic() + 120
    while "step" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # nobody gets a chance to clean up
    proc.wait()
    assert not (path / "results/ci/runs/baseline/seed_0/train/run.json").exists(), "killed too late to test anything"
    _run("snakemake --unlock", path, env=env)
    try:
        _run("bash workflow/scripts/reproduce.sh --config scale=ci", path, env=env)
    finally:
        restore_editable_install()
    assert (path / "results/ci/runs/baseline/seed_0/train/run.json").is_file()
    assert (path / "results/ci/runs/baseline/seed_0/evaluate/metrics.json").is_file()


@pytest.mark.slow
def test_paper_command_plans_every_job(clone):
    """The paper-scale SLURM command as written, planned (-n): it needs GPUs and CIFAR-100 to run."""
    (command,) = [c for c in readme_commands() if c.endswith("scale=paper") and "--profile slurm" in c]
    _run("bash workflow/scripts/link-slurm-profile.sh", clone["path"], env=clone["env"])  # what setup does
    proc = _run(command.replace("snakemake ", "snakemake -n ", 1), clone["path"], env=clone["env"])
    assert "train_baseline" in proc.stdout and "learn_groups" in proc.stdout


@pytest.mark.slow
def test_reference_results_commands_plan_their_jobs(clone):
    """The README's extra-seeds, gap-study and extended-study commands as written, planned (-n): each plans the
    runs the default command does not, and passes its flag to the tables job."""
    import yaml

    from splitnet.config import load_registry
    from splitnet.gap_study import gap_runs

    registry = load_registry(ROOT / "params")
    extra, gap, extended = (
        next(c for c in readme_commands() if c.endswith(flag))
        for flag in ("extra_seeds=True", "gap_study=True", "extended_study=True")
    )
    plans = {}
    for command in (extra, gap, extended, "snakemake --cores all"):
        proc = _run(command.replace("snakemake ", "snakemake -n -p ", 1), clone["path"], env=clone["env"])
        plans[command] = proc.stdout
    (group,) = yaml.safe_load((ROOT / "params" / "scales.yaml").read_text())["scales"]["cpu"]["seed_groups"]
    assert "results/cpu/runs/baseline/seed_7/train" in plans[extra] and "--extra-seeds" in plans[extra]
    assert "seed_7" not in plans["snakemake --cores all"] and "--extra-seeds" not in plans["snakemake --cores all"]
    assert "--gap-study" in plans[gap] and "splitnet gap-study" in plans[gap]
    assert all(f"runs/{exp}/seed_{seed}/evaluate" in plans[gap] for exp, seed in gap_runs(registry))
    assert f"seed_{group['seeds'] - 1}" not in plans[gap]
    assert "planted_hard/runs/fc@equal_budget/seed_4/evaluate" in plans[extended]
    assert "splitnet study --extended" in plans[extended] and "planted_hard" not in plans["snakemake --cores all"]
