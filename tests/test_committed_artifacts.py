"""Committed artifacts are current: results carry no machine-specific absolute paths, verdicts recompute
from the committed per-seed numbers, dvc.lock records the code and params of this tree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import fresh_clone

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r"(?<![\w.])/(root|tmp|home|work|scratch|Users|var/folders)/")
COMMITTED_RESULTS = ("docs/results/", "benchmarks/results/")


def test_committed_results_have_no_absolute_paths():
    listed = subprocess.run(["git", "ls-files", *COMMITTED_RESULTS], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in listed.stdout.split()]
    assert files, "no committed results found"
    offending = []
    for path in files:
        if path.suffix in (".png", ".pdf"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ABSOLUTE.search(line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offending, "\n".join(offending)


COMMITTED_CPU = ROOT / "docs" / "results" / "cpu"


def test_committed_cpu_results_show_the_method_converged():
    """The reference results of the default scale: every row ran every seed, every grouping
    converged before it was split, overlap rows still reduce params, and the claims table has a
    verdict for each claim."""
    import csv
    import json

    import yaml

    from splitnet.config import load_registry, row_seeds

    registry = load_registry(ROOT / "params")
    summary = json.loads((COMMITTED_CPU / "metrics" / "summary.json").read_text())
    seeds = yaml.safe_load((ROOT / "params" / "scales.yaml").read_text())["scales"]["cpu"]["seeds"]
    assert summary["scale"] == "cpu" and summary["seeds"] == seeds and len(seeds) >= 3
    rows = {exp: entry for table in ("table1", "table2") for exp, entry in summary[table].items()}
    # every row has every seed it runs (the seed groups' extra seeds too, in an extra-seeds run)
    extra = summary["extra_seeds"]
    missing = {
        exp for exp, entry in rows.items() if entry is None or entry["seeds"] != row_seeds(registry, exp, "cpu", extra)
    }
    assert not missing, f"rows without all their seeds: {missing}"
    grouping = {exp: entry for exp, entry in rows.items() if "assignment_converged" in entry}
    assert len(grouping) >= 8 and all(entry["assignment_converged"] >= 0.9 for entry in grouping.values()), grouping
    for split in ("fc", "shallow", "deep"):
        overlap = rows[f"{split}_overlap"]["params_reduced_pct"]
        assert 0 <= overlap <= rows[split]["params_reduced_pct"], split
    with (COMMITTED_CPU / "tables" / "claims.csv").open() as fh:
        claims = list(csv.DictReader(fh))
    assert len(claims) >= 8 and {c["verdict"] for c in claims} <= {"holds", "contradicted", "inconclusive"}


def test_committed_grouping_study_covers_every_cell():
    """docs/results/cpu holds the grouping study: every (dataset, preset) of params with all its
    seeds finished, the issue's columns, and `semantic` rows in both tables."""
    import csv
    import json

    from splitnet.config import load_registry
    from splitnet.study import study_cells

    registry = load_registry(ROOT / "params")
    with (COMMITTED_CPU / "tables" / "grouping_study.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {"dataset", "preset", "seeds", "converged_seeds", "ari_mean", "ari_std", "test_error_mean"} <= set(rows[0])
    cells = study_cells(registry)
    assert [(r["dataset"], r["preset"]) for r in rows] == [(c.dataset, c.preset) for c in cells]
    assert all(int(r["seeds"]) == len(c.seeds) >= 5 for r, c in zip(rows, cells)), "a study cell misses seeds"
    assert {r["dataset"] for r in rows} >= {"planted", "fashion_g2"}
    assert (COMMITTED_CPU / "figures" / "grouping_study.png").stat().st_size > 10_000
    summary = json.loads((COMMITTED_CPU / "metrics" / "summary.json").read_text())
    assert "shallow@semantic" in summary["table1"] and "shallow_g3@semantic" in summary["table2"]


def test_every_committed_verdict_is_recomputed_from_the_committed_per_seed_numbers():
    """claims.csv follows from metrics/per_seed.csv and params/claims.yaml alone, and the per-seed
    numbers are the ones the committed tables summarise."""
    import csv
    import json
    import statistics

    from splitnet.claims import Samples, claim_rows, load_claims
    from splitnet.config import load_registry, read_yaml
    from splitnet.per_seed import read_csv

    registry = load_registry(ROOT / "params")
    paper = read_yaml(ROOT / "params" / "paper_results.yaml")
    doc = load_claims(ROOT / "params", registry, paper)
    per_seed = read_csv(COMMITTED_CPU / "metrics" / "per_seed.csv")
    with (COMMITTED_CPU / "tables" / "claims.csv").open() as fh:
        committed = list(csv.DictReader(fh))
    recomputed = claim_rows(doc, Samples(per_seed), paper)
    assert [{k: v for k, v in row.items() if k != "scale"} for row in committed] == recomputed
    assert {row["id"] for row in committed} == {claim["id"] for claim in doc["claims"]}
    summary = json.loads((COMMITTED_CPU / "metrics" / "summary.json").read_text())
    for table in ("table1", "table2"):
        for exp, entry in summary[table].items():
            errors = [r["test_error"] for r in per_seed if r["experiment"] == exp]
            assert len(errors) == entry["n"] and abs(statistics.fmean(errors) - entry["test_error"]) < 1e-5, exp


def test_committed_gap_study_has_the_claims_arms_and_agrees_with_the_per_seed_numbers():
    """docs/results/cpu holds the gap study: a row per arm of params (run or marked not run), the
    arms the claim deep_degradation_is_capacity reads with every seed, its figure, and each run
    arm's mean test error equal to the per-seed numbers' (which the claims are computed from)."""
    import csv
    import statistics

    from splitnet.config import load_registry
    from splitnet.gap_study import COLUMNS, gap_cells
    from splitnet.per_seed import read_csv

    registry = load_registry(ROOT / "params")
    with (COMMITTED_CPU / "tables" / "gap_study.csv").open() as fh:
        rows = {row["arm"]: row for row in csv.DictReader(fh)}
    assert list(next(iter(rows.values()))) == list(COLUMNS)
    assert list(rows) == [cell.arm for cell in gap_cells(registry)]
    seeds = len(registry["gap_study"]["seeds"])
    claim_arms = ("baseline", "deep", "hier", "baseline@width4", "deep@width4", "hier@width4")
    assert all(int(rows[arm]["seeds"]) == seeds for arm in claim_arms), {a: rows[a]["seeds"] for a in claim_arms}
    per_seed = read_csv(COMMITTED_CPU / "metrics" / "per_seed.csv")
    for arm in ("baseline@width4", "deep@width4", "hier@width4"):
        errors = [r["test_error"] for r in per_seed if r["experiment"] == arm]
        assert abs(statistics.fmean(errors) - float(rows[arm]["test_error_mean"])) < 1e-4, arm
    assert (COMMITTED_CPU / "figures" / "gap_study.png").stat().st_size > 10_000


def test_committed_extended_study_covers_every_extended_cell():
    """grouping_study_extended.csv: every (dataset, preset) marked extended, all seeds, with budgets."""
    import csv

    from splitnet.config import load_registry
    from splitnet.study import study_cells

    cells = study_cells(load_registry(ROOT / "params"), extended=True)
    with (COMMITTED_CPU / "tables" / "grouping_study_extended.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["dataset"], r["preset"]) for r in rows] == [(c.dataset, c.preset) for c in cells]
    assert all(int(r["seeds"]) == len(c.seeds) for r, c in zip(rows, cells)), "a cell misses seeds"
    assert all(r["sgd_steps"] and r["init_ari_mean"] for r in rows)
    budgets = {r["preset"]: int(r["sgd_steps"]) for r in rows}
    assert budgets["equal_budget"] == budgets["semantic"] > budgets["paper"]  # equal SGD steps, baseline counted


def _dvc_changed_inputs(repo: Path) -> list[dict]:
    dvc = Path(sys.executable).parent / "dvc"
    if not dvc.exists():
        pytest.skip("dvc is not installed next to this python")
    proc = subprocess.run(
        [str(dvc), "status", "--json"],
        cwd=repo,
        env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    changes = json.loads(proc.stdout or "{}").get("reproduce", [])
    return [c for c in changes if {"changed deps", "changed params", "changed command"} & set(c)]


def test_dvc_lock_records_the_code_and_params_of_this_tree():
    """`dvc status` in a fresh clone may report only the uncommitted outputs, never changed inputs."""
    changed_inputs = _dvc_changed_inputs(ROOT)
    assert not changed_inputs, (
        f"dvc.lock is out of date: {changed_inputs}; run `.venv/bin/python workflow/scripts/refresh_dvc_lock.py` "
        "and commit dvc.lock"
    )


def test_refresh_script_brings_a_stale_dvc_lock_up_to_date(tmp_path):
    """The README's contributor command: a code change makes dvc.lock stale; the script makes it current."""
    clone = fresh_clone(tmp_path)
    (clone / "src" / "splitnet" / "__init__.py").write_text("# a change\n", encoding="utf-8")
    assert _dvc_changed_inputs(clone)
    subprocess.run([sys.executable, "workflow/scripts/refresh_dvc_lock.py"], cwd=clone, check=True, timeout=300)
    assert not _dvc_changed_inputs(clone)
