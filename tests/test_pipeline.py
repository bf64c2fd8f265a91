"""End-to-end pipeline tests: Snakemake DAG at paper scale, the ci grid through Snakemake (tables,
figures, MLflow, report, no-op rerun, one-row rerun), `dvc repro` in a fresh clone, real SLURM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
       "GIT_AUTHOR_NAME": "splitnet-test", "GIT_AUTHOR_EMAIL": "test@localhost",
       "GIT_COMMITTER_NAME": "splitnet-test", "GIT_COMMITTER_EMAIL": "test@localhost"}
TABLE_FILES = [f"{t}.{e}" for t in ("table1", "table2") for e in ("md", "tex", "csv")] + ["class_groups.md", "arch_check.md"]

pytestmark = pytest.mark.slow


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    # SIGTERM does not stop a hung Snakemake; SIGINT does.
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout), sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


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


def test_paper_scale_dag_builds_for_every_row():
    proc = check(snakemake("-n", "--config", "scale=paper", "results=/tmp/splitnet-dag-check"))
    counts = job_counts(proc.stdout)
    registry = yaml.safe_load((ROOT / "params" / "experiments.yaml").read_text())
    rows = {r["experiment"] for t in registry["tables"].values() for r in t["rows"]}
    assert counts["evaluate"] == len(rows)
    assert counts["train_baseline"] == 1 and counts["prepare_data"] == 1  # the baseline is shared
    assert counts["tables"] == 1 and counts["figures"] == 1 and counts["track"] == 1
    non_baseline = len(rows) - 1
    assert counts["split"] == counts["finetune"] == non_baseline


def test_bad_params_fail_before_any_job(tmp_path):
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    text = (params / "experiments.yaml").read_text().replace("split: 2-4-4", "splt: 2-4-4")
    (params / "experiments.yaml").write_text(text)
    proc = snakemake("-n", "--config", f"params_dir={params}", f"results={tmp_path / 'results'}")
    assert proc.returncode != 0
    assert "experiments.yaml: experiments.hier.group" in proc.stdout + proc.stderr
    assert "splt" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    """The whole ci grid through Snakemake, in a temporary results dir with its own params copy."""
    base = tmp_path_factory.mktemp("ci")
    params = base / "params"
    shutil.copytree(ROOT / "params", params)
    results = base / "results"
    config = ["--config", "scale=ci", f"params_dir={params}", f"results={results}"]
    start = time.perf_counter()
    proc = check(snakemake("--cores", "2", *config))
    return {"base": base, "params": params, "results": results, "config": config,
            "seconds": time.perf_counter() - start, "log": proc.stderr}


def test_ci_grid_produces_both_tables_figures_and_mlflow(ci_run):
    tables = ci_run["results"] / "tables"
    for name in TABLE_FILES:
        assert (tables / name).is_file(), name
    md = (tables / "table1.md").read_text()
    assert "NOT CIFAR-100 numbers" in md and "missing" not in md
    summary = json.loads((ci_run["results"] / "metrics" / "summary.json").read_text())
    assert summary["scale"] == "ci"
    assert all(v is not None for table in ("table1", "table2") for v in summary[table].values())
    assert summary["table1"]["hier"]["params_m"] < summary["table1"]["baseline"]["params_m"]
    for fig in ("fig1_assignment_dynamics", "fig2_block_structure"):
        for ext in ("png", "pdf"):
            assert (ci_run["results"] / "figures" / f"{fig}.{ext}").stat().st_size > 1000

    track = json.loads((ci_run["results"] / "tracking" / "ci.json").read_text())
    assert track["missing"] == 0 and track["created"] > 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(track["tracking_uri"])
    for table, rows in (("table1", 11), ("table2", 4)):
        exp = client.get_experiment_by_name(f"splitnet/ci/{table}")
        runs = client.search_runs([exp.experiment_id], max_results=500)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == rows
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
        assert all("test_error" in p.data.metrics for p in parents)


def test_rerun_with_nothing_changed_does_nothing(ci_run):
    start = time.perf_counter()
    proc = check(snakemake("-n", *ci_run["config"]))
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert time.perf_counter() - start < 30


def test_changing_one_row_reruns_only_that_row_and_the_tables(ci_run):
    path = ci_run["params"] / "experiments.yaml"
    original = path.read_text()
    try:
        data = yaml.safe_load(original)
        data["experiments"]["shallow_g3"]["group"]["gamma_balance"] = 5.0
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        proc = check(snakemake("-n", *ci_run["config"]))
        counts = job_counts(proc.stdout)
        assert counts.get("learn_groups") == 1 and counts.get("evaluate") == 1
        assert counts.get("split") == 1 and counts.get("finetune") == 1
        assert counts.get("train_baseline") is None and counts.get("prepare_data") is None
        assert counts.get("tables") == 1
        wildcards = {line.split("exp=")[1].strip() for line in proc.stdout.splitlines() if "wildcards: exp=" in line}
        assert wildcards == {"shallow_g3"}
    finally:
        path.write_text(original)


def test_snakemake_report(ci_run):
    report = ci_run["base"] / "report.html"
    check(snakemake("--report", str(report), *ci_run["config"]))
    text = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000 and "table1" in text


def test_dvc_repro_in_a_fresh_clone_gives_identical_tables(ci_run, tmp_path):
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("needs a git checkout with a commit")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # The ci run used a params copy: compare against the same params (the committed ones).
    proc = subprocess.run(
        ["timeout", "-s", "INT", "-k", "30", "900", str(BIN / "dvc"), "exp", "run", "-S", "params/pipeline.yaml:scale=ci"],
        cwd=clone, env=ENV, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in TABLE_FILES:
        assert (clone / "results" / "tables" / name).read_text() == (ci_run["results"] / "tables" / name).read_text(), name
    show = subprocess.run([str(BIN / "dvc"), "metrics", "show", "--json"], cwd=clone, env=ENV, capture_output=True, text=True)
    assert show.returncode == 0 and "table1" in show.stdout


def test_pipeline_through_real_slurm(slurm_cluster, tmp_path):  # noqa: F811
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    results = tmp_path / "results"
    rows = ["baseline", "shallow", "shallow_g3", "shallow_g4"]  # Table 2
    targets = [str(results / "runs" / "ci" / r / "evaluate" / "metrics.json") for r in rows]
    # Targets before --config: --config takes every following word as a key=value pair.
    proc = check(snakemake("--profile", str(ROOT / "workflow" / "profiles" / "slurm"), *targets, "--config",
                           "scale=ci", f"params_dir={params}", f"results={results}", timeout=1500))
    for r in rows:
        record = json.loads((results / "runs" / "ci" / r / "evaluate" / "run.json").read_text())
        assert record["status"] == "FINISHED"
        assert record["tags"]["splitnet.slurm_job_id"], "the job did not run under SLURM"
    assert list((ROOT / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log"))
