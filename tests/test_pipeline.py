"""End-to-end pipeline tests: Snakemake DAG at paper scale, the ci grid through Snakemake (tables,
figures, MLflow, report, no-op rerun, one-row rerun), `dvc repro` in a fresh clone, real SLURM."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import BIN, ENV, ROOT, check, fresh_clone, job_counts, snakemake
from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

from splitnet.claims import claim_experiments, load_claims
from splitnet.config import METHOD_STAGES, load_registry, method_of, read_yaml

REGISTRY = load_registry(ROOT / "params")
CLAIMS = load_claims(ROOT / "params", REGISTRY, read_yaml(ROOT / "params" / "paper_results.yaml"))["claims"]

TABLE_FILES = [f"{t}.{e}" for t in ("table1", "table2") for e in ("md", "tex", "csv")] + [
    "class_groups.md",
    "arch_check.md",
    "claims.md",
    "claims.csv",
]
PER_SEED = "metrics/per_seed.csv"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scale", ["paper", "paper_fp32"])
def test_paper_scale_dag_builds_for_every_row(scale):
    proc = check(snakemake("-n", "--config", f"scale={scale}", "results=/tmp/splitnet-dag-check"))
    counts = job_counts(proc.stdout)
    registry = yaml.safe_load((ROOT / "params" / "experiments.yaml").read_text())
    seeds = yaml.safe_load((ROOT / "params" / "scales.yaml").read_text())["scales"][scale]["seeds"]
    rows = {r["experiment"] for t in registry["tables"].values() for r in t["rows"]}
    rows |= {exp for runs in registry["figures"].values() for exp in runs.values()}
    rows |= claim_experiments({"claims": CLAIMS})  # the claims' own rows (random split, weight decay, dropout)
    assert counts["evaluate"] == len(rows) * len(seeds)
    assert counts["train_baseline"] == len(seeds) and counts["prepare_data"] == 1  # the baseline is shared
    assert counts["tables"] == 1 and counts["figures"] == 1 and counts["track"] == 1
    non_baseline = len(rows) - 1
    assert counts["split"] == counts["finetune"] == non_baseline * len(seeds)


def _paper_finetune_commands(*config: str) -> tuple[str, str, dict[str, str]]:
    """The hier and ssl_1e-3 finetune commands of a paper-scale dry run, and the GPUs each asks for."""
    # targets before --config (which takes every following word as a key=value pair)
    proc = check(
        snakemake(
            "-n",
            "-p",
            "/tmp/splitnet-dag-check/paper/runs/hier/seed_0/finetune/model.pt",
            "/tmp/splitnet-dag-check/paper/runs/ssl_1e-3/seed_0/finetune/model.pt",
            "--config",
            "scale=paper",
            "results=/tmp/splitnet-dag-check",
            *config,
        )
    )
    commands = [line for line in proc.stdout.splitlines() if "-m splitnet finetune" in line]
    hier = next(c for c in commands if "--experiment hier" in c)
    ssl = next(c for c in commands if "--experiment ssl_1e-3" in c)
    blocks = proc.stdout.split("rule finetune:")[1:]
    gpus = {("hier" if "exp=hier" in b else "ssl"): b.split("gpu=")[1].split(",")[0] for b in blocks}
    return hier, ssl, gpus


def test_paper_scale_finetunes_on_one_gpu_unless_model_parallel_is_asked_for():
    """One GPU per finetune by default; `--config finetune_workers=2` (supp. §6) starts two processes
    through torchrun (`splitnet finetune --parallel`) for split rows and asks SLURM for two GPUs;
    dense rows stay one process on one GPU."""
    assert yaml.safe_load((ROOT / "params" / "scales.yaml").read_text())["scales"]["paper"]["finetune_workers"] == 1
    hier, ssl, gpus = _paper_finetune_commands()
    assert "torch.distributed.run" not in hier and "--parallel" not in hier
    assert gpus == {"hier": "1", "ssl": "1"}
    hier, ssl, gpus = _paper_finetune_commands("finetune_workers=2")
    assert "-m torch.distributed.run --standalone --nproc-per-node=2 -m splitnet finetune" in hier
    assert hier.split(">")[0].rstrip().endswith("--parallel")
    assert "torch.distributed.run" not in ssl and "--parallel" not in ssl
    assert gpus == {"hier": "2", "ssl": "1"}


def test_grouping_study_target_runs_every_dataset_preset_and_seed():
    """`snakemake grouping_study`: one evaluate per (dataset, preset, seed), at each dataset's scale."""
    from splitnet.config import load_registry
    from splitnet.study import study_cells

    registry = load_registry(ROOT / "params")
    proc = check(snakemake("-n", "grouping_study", "--config", "results=/tmp/splitnet-study-dag"))
    counts = job_counts(proc.stdout)
    cells = study_cells(registry)
    assert counts["evaluate"] == len({(c.scale, c.experiment, s) for c in cells for s in c.seeds})
    assert counts["grouping_study"] == 1 and counts["prepare_data"] == len({c.scale for c in cells})
    assert (
        "results/planted" not in proc.stdout
        and "/tmp/splitnet-study-dag/planted/runs/fc@semantic/seed_4" in proc.stdout
    )
    assert "planted_hard" not in proc.stdout  # the extended datasets are their own target
    proc = check(snakemake("-n", "grouping_study_extended", "--config", "results=/tmp/splitnet-study-dag"))
    extended = study_cells(registry, extended=True)
    assert job_counts(proc.stdout)["evaluate"] == sum(len(c.seeds) for c in extended)
    assert "/tmp/splitnet-study-dag/planted_hard/runs/fc@paper_dynamics/seed_4" in proc.stdout


def test_bad_params_fail_before_any_job(tmp_path):
    params = tmp_path / "params"
    shutil.copytree(ROOT / "params", params)
    text = (params / "experiments.yaml").read_text().replace("split: 2-4-4", "splt: 2-4-4")
    (params / "experiments.yaml").write_text(text)
    proc = snakemake("-n", "--config", f"params_dir={params}", f"results={tmp_path / 'results'}")
    assert proc.returncode != 0
    assert "experiments.yaml: experiments.hier.group" in proc.stdout + proc.stderr
    assert "splt" in proc.stdout + proc.stderr


def test_ci_grid_produces_both_tables_figures_and_mlflow(main_run):
    out = main_run["results"] / "ci"
    tables = out / "tables"
    for name in TABLE_FILES:
        assert (tables / name).is_file(), name
    md = (tables / "table1.md").read_text()
    assert "NOT CIFAR-100 numbers" in md and "missing" not in md
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    assert summary["scale"] == "ci" and summary["seeds"] == [0]
    assert all(v is not None and v["seeds"] == [0] for table in ("table1", "table2") for v in summary[table].values())
    assert 0 <= summary["table1"]["deep"]["assignment_converged"] <= 1  # grouping rows say how far they converged
    assert "assignment_converged" not in summary["table1"]["baseline"]
    claims = list(csv.DictReader((tables / "claims.csv").open()))
    per_seed = list(csv.DictReader((out / PER_SEED).open()))
    assert {r["experiment"] for r in per_seed} == claim_experiments({"claims": CLAIMS}) | {
        r["experiment"] for t in REGISTRY["tables"].values() for r in t["rows"]
    }
    assert len(claims) == len(CLAIMS) and {c["verdict"] for c in claims} <= {"holds", "contradicted", "inconclusive"}
    assert summary["table1"]["hier"]["params_m"] < summary["table1"]["baseline"]["params_m"]
    for fig in ("fig1_assignment_dynamics", "fig2_block_structure"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{fig}.{ext}").stat().st_size > 1000

    track = json.loads((out / "tracking.json").read_text())
    assert track["missing"] == 0 and track["created"] > 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{main_run['results'] / 'mlflow.db'}")
    registry = yaml.safe_load((ROOT / "params" / "experiments.yaml").read_text())
    for table in ("table1", "table2"):
        rows = len(registry["tables"][table]["rows"])
        exp = client.get_experiment_by_name(f"splitnet/ci/{table}")
        runs = client.search_runs([exp.experiment_id], max_results=500)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == rows
        assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
        assert all("test_error" in p.data.metrics for p in parents)
    claims_runs = client.search_runs([client.get_experiment_by_name("splitnet/ci/claims").experiment_id])
    assert len(claims_runs) == 1
    assert {a.path for a in client.list_artifacts(claims_runs[0].info.run_id)} == {"claims.md", "claims.csv"}


def test_rerun_with_nothing_changed_does_nothing(main_run):
    start = time.perf_counter()
    proc = check(snakemake("-n", *main_run["config"], cwd=main_run["path"]))
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert time.perf_counter() - start < 30


def test_changing_one_row_reruns_only_that_row_and_the_tables(main_run):
    path = main_run["path"] / "params" / "experiments.yaml"
    original = path.read_text()
    try:
        data = yaml.safe_load(original)
        data["experiments"]["shallow_g4"]["group"]["gamma_balance"] = 5.0  # a row no preset row derives from
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        proc = check(snakemake("-n", *main_run["config"], cwd=main_run["path"]))
        counts = job_counts(proc.stdout)
        assert counts.get("learn_groups") == 1 and counts.get("evaluate") == 1
        assert counts.get("split") == 1 and counts.get("finetune") == 1
        assert counts.get("train_baseline") is None and counts.get("prepare_data") is None
        assert counts.get("tables") == 1
        wildcards = {
            line.split("exp=")[1].split(",")[0].strip()
            for line in proc.stdout.splitlines()
            if "wildcards:" in line and "exp=" in line
        }
        assert wildcards == {"shallow_g4"}
    finally:
        path.write_text(original)


def _jobs_after_edit(main_run, edits: dict[str, str]) -> tuple[dict[str, int], set[str]]:
    """`snakemake -n` in the main run's clone after appending text to files (restored after):
    the job counts and the rows whose jobs would run."""
    originals = {name: (main_run["path"] / name).read_text() for name in edits}
    env = {**main_run["env"], "PYTHONPATH": str(main_run["path"] / "src")}  # the clone's code, edited
    try:
        for name, text in edits.items():
            (main_run["path"] / name).write_text(originals[name] + text)
        proc = check(snakemake("-n", *main_run["config"], cwd=main_run["path"], env=env))
    finally:
        for name, original in originals.items():
            (main_run["path"] / name).write_text(original)
    rows = {line.split("exp=")[1].split(",")[0].strip() for line in proc.stdout.splitlines() if "exp=" in line}
    counts = job_counts(proc.stdout)
    counts.pop("total", None)
    return counts, rows


def test_a_code_change_reruns_exactly_the_jobs_that_run_that_code(main_run):
    registry = load_registry(main_run["path"] / "params")
    seeds = len(registry["scales"]["ci"]["seeds"])
    rows = {r["experiment"] for t in registry["tables"].values() for r in t["rows"]}
    rows |= {exp for runs in registry["figures"].values() for exp in runs.values()}
    rows |= claim_experiments({"claims": CLAIMS})
    grouping_rows = {r for r in rows if "learn_groups" in METHOD_STAGES[method_of(registry, r)]}
    split_rows = {r for r in rows if "split" in METHOD_STAGES[method_of(registry, r)]}
    statement = "\n_CODE_CHANGE_TEST = 1\n"

    # the regularizers run only in learn-groups: those jobs, their dependents and the reports
    counts, changed_rows = _jobs_after_edit(main_run, {"src/splitnet/regularizers.py": statement})
    assert changed_rows == grouping_rows
    n = len(grouping_rows) * seeds
    assert (counts["learn_groups"], counts["split"], counts["finetune"], counts["evaluate"]) == (n, n, n, n)
    assert "train_baseline" not in counts and "prepare_data" not in counts
    assert counts["tables"] == counts["figures"] == counts["track"] == 1

    # the model-parallel runner runs only in finetune: finetune and evaluate of every split or pruned row
    counts, changed_rows = _jobs_after_edit(main_run, {"src/splitnet/parallel/runner.py": statement})
    assert changed_rows == split_rows
    assert counts["finetune"] == counts["evaluate"] == len(split_rows) * seeds
    assert not {"prepare_data", "train_baseline", "learn_groups", "split", "figures"} & set(counts)

    # a definition that no stage uses, in the module of most stages' functions: no change
    counts, _ = _jobs_after_edit(main_run, {"src/splitnet/stages.py": statement})
    assert counts == {}

    # presentation code reruns only the presentation jobs
    counts, _ = _jobs_after_edit(main_run, {"src/splitnet/tables.py": statement})
    assert set(counts) == {"tables", "track", "all"}
    counts, _ = _jobs_after_edit(main_run, {"src/splitnet/figures.py": statement})
    assert set(counts) == {"figures", "all"}

    # docs, tests, comments: nothing
    for edits in (
        {"README.md": "\nedited\n", "tests/test_docs.py": "\n# edited\n"},
        {"src/splitnet/engine.py": "\n# a comment is no code change\n"},
    ):
        counts, _ = _jobs_after_edit(main_run, edits)
        assert counts == {}, counts


def test_snakemake_report(main_run):
    report = main_run["path"].parent / "report.html"
    check(snakemake("--report", str(report), *main_run["config"], cwd=main_run["path"]))
    text = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000 and "table1" in text


def _clone(tmp_path: Path) -> Path:
    return fresh_clone(tmp_path)


def _use_scale(clone: Path, scale: str, tables: tuple[str, ...] | None = None) -> None:
    """What a user does to change the default: edit params/pipeline.yaml (and optionally the tables) and commit."""
    pipeline = clone / "params" / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text().replace("scale: cpu", f"scale: {scale}", 1))
    if tables is not None:
        experiments = clone / "params" / "experiments.yaml"
        data = yaml.safe_load(experiments.read_text())
        data["tables"] = {name: spec for name, spec in data["tables"].items() if name in tables}
        experiments.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", f"scale {scale}"], cwd=clone, env=ENV, check=True)


def _git_status(clone: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout


def _dvc(clone: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["timeout", "-s", "INT", "-k", "30", str(timeout), str(BIN / "dvc"), *args],
        cwd=clone,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"dvc {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    return proc


def test_dvc_commands_of_the_readme(main_run, tmp_path):
    """`dvc repro`, `dvc exp run --temp -S ...` (workspace params untouched), `dvc exp show`, `dvc metrics show`."""
    clone = _clone(tmp_path)
    _use_scale(clone, "ci", tables=("table2",))  # Table 2 only: three grids run here
    _dvc(clone, "repro")
    # Same rows and params as the main run: Table 2 must be byte-identical.
    for name in ("table2.md", "table2.tex", "table2.csv"):
        assert (clone / "results" / "ci" / "tables" / name).read_text() == (
            main_run["results"] / "ci" / "tables" / name
        ).read_text(), name
    assert "up to date" in _dvc(clone, "repro").stdout
    before = {p: p.read_bytes() for p in (clone / "params").iterdir()}
    _dvc(clone, "exp", "run", "--temp", "-S", "params/pipeline.yaml:scale=ci")
    _dvc(
        clone,
        "exp",
        "run",
        "--temp",
        "-S",
        "params/experiments.yaml:experiments.deep.group.schedule.weight_decay=0.0005",
    )
    assert {p: p.read_bytes() for p in (clone / "params").iterdir()} == before
    show = _dvc(clone, "exp", "show", "--md").stdout
    assert "weight_decay" in show and "table2" in show
    assert "table2" in _dvc(clone, "metrics", "show").stdout
    assert "params/" not in _git_status(clone)


def test_slurm_profile_as_written(slurm_cluster, tmp_path):  # noqa: F811
    """`snakemake --cores all --profile slurm` literally, after setup linked the profile, on a real SLURM
    (the ci scale and Table 2 only, set in params as a user would)."""
    clone = _clone(tmp_path)
    _use_scale(clone, "ci", tables=("table2",))
    home = tmp_path / "home"
    env = {**ENV, "HOME": str(home)}
    subprocess.run(["bash", str(clone / "workflow" / "scripts" / "link-slurm-profile.sh")], env=env, check=True)
    proc = subprocess.run(
        ["timeout", "-s", "INT", "-k", "30", "1500", "bash", "-c", "snakemake --cores all --profile slurm"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    check(proc)
    for r in ("baseline", "shallow", "shallow_g3", "shallow_g4"):
        record = json.loads((clone / "results" / "ci" / "runs" / r / "seed_0" / "evaluate" / "run.json").read_text())
        assert record["status"] == "FINISHED"
        assert record["tags"]["splitnet.slurm_job_id"], "the job did not run under SLURM"
    assert list((clone / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log"))


def test_config_values_reach_the_shell_quoted(tmp_path):
    """A `results` value with shell syntax and spaces is one argument: nothing runs, the odd
    directory is created as named (one real job: prepare_data)."""
    marker = tmp_path / "injected"
    results = tmp_path / f"res dir;touch {marker};$(touch {marker})"
    target = results / "ci" / "data" / "manifest.json"
    check(snakemake("--cores", "1", str(target), "--config", "scale=ci", f"results={results}"))
    assert target.is_file() and not marker.exists()
    assert (results / "ci" / "logs" / "prepare_data.log").is_file()
