"""The gap study: does the Deep/Hier error penalty shrink as the network widens?

The supplement (§4.1) hypothesises that "the degradation of the deep split is due to insufficient
capacity". At the cpu scale WRN-10-1's branches are 8-32 channels wide, 8x narrower than
WRN-16-8's, and Deep/Hier cost ~3.5 pt over the baseline against the paper's ~0.4-0.5 pt.
``params/experiments.yaml: gap_study`` runs the split rows and the baseline at each width preset
(the row unchanged, 2x and 4x as wide) and arms for the confounders (no dropout, longer
finetuning, dense nets thinned to the split nets' param counts); every (arm, seed) is an ordinary
pipeline run at the study's scale.  The table gives,
per arm, the test error and its penalty over the baseline *at the same width* (Welch 95 % CI);
the claim ``deep_degradation_is_capacity`` judges the change of the penalty from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .claims import interval, stat
from .config import PAPER_PRESET, study_experiment
from .io import atomic_write_text, csv_text
from .outputs import ScaleOutputs
from .tables import seed_metrics

COLUMNS = (
    "arm",
    "kind",
    "row",
    "width",
    "experiment",
    "seeds",
    "test_error_mean",
    "test_error_std",
    "params_mean",
    "params_reduced_pct_mean",
    "penalty_mean",
    "penalty_ci_low",
    "penalty_ci_high",
)
BASELINE = "baseline"


@dataclass(frozen=True)
class GapCell:
    """One arm: a row at a width preset (``paper``: as the scale runs it), or a confounder arm."""

    arm: str
    kind: str  # "width" (a row at a width preset) or "confounder"
    row: str
    width: str  # the width preset the penalty is measured at (its baseline's)
    experiment: str


def gap_cells(registry: dict) -> list[GapCell]:
    """Every row at every width, then the confounder arms (at the scale's own width)."""
    study = registry["gap_study"]
    cells = [
        GapCell(study_experiment(row, width), "width", row, width, study_experiment(row, width))
        for width in study["widths"]
        for row in study["rows"]
    ]
    cells += [GapCell(arm, "confounder", arm.partition("@")[0], PAPER_PRESET, arm) for arm in study["arms"]]
    return cells


def gap_runs(registry: dict) -> list[tuple[str, int]]:
    """(experiment, seed) of every run the study reads."""
    seeds = registry["gap_study"]["seeds"]
    return [(cell.experiment, seed) for cell in gap_cells(registry) for seed in seeds]


def evaluate_files(registry: dict, results: str | Path) -> list[Path]:
    """The metrics.json of every run (the Snakemake target's inputs)."""
    out = ScaleOutputs(results, registry["gap_study"]["scale"])
    return [out.run_dir(exp, seed, "evaluate") / "metrics.json" for exp, seed in gap_runs(registry)]


def gap_rows(registry: dict, results: str | Path) -> list[dict]:
    study = registry["gap_study"]
    runs = ScaleOutputs(results, study["scale"]).runs
    cells = gap_cells(registry)
    metrics = {cell.experiment: seed_metrics(runs, cell.experiment, study["seeds"]) for cell in cells}
    errors = {exp: stat([m["test_error"] for m in found]) for exp, found in metrics.items()}
    rows = []
    for cell in cells:
        reference = study_experiment(BASELINE, cell.width)
        error, baseline = errors[cell.experiment], errors[reference]
        # A thinned dense net (baseline@thin_*) has a penalty too: over the full-width baseline.
        penalty = (
            None if error is None or baseline is None or cell.experiment == reference else interval(error, baseline)
        )
        reduced = stat([m["params_reduced_pct"] for m in metrics[cell.experiment]])
        params = stat([m["params"] for m in metrics[cell.experiment]])
        rows.append(
            {
                "arm": cell.arm,
                "kind": cell.kind,
                "row": cell.row,
                "width": cell.width,
                "experiment": cell.experiment,
                "seeds": len(metrics[cell.experiment]),
                "test_error_mean": None if error is None else error.mean,
                "test_error_std": None if error is None else error.std,
                "params_mean": None if params is None else params.mean,
                "params_reduced_pct_mean": None if reduced is None else reduced.mean,
                "penalty_mean": None if penalty is None else (penalty[0] + penalty[1]) / 2,
                "penalty_ci_low": None if penalty is None else penalty[0],
                "penalty_ci_high": None if penalty is None else penalty[1],
            }
        )
    return rows


def render_csv(rows: list[dict]) -> str:
    return csv_text(COLUMNS, rows)


def render_markdown(rows: list[dict], registry: dict) -> str:
    study = registry["gap_study"]
    lines = [
        f"**Gap study (scale '{study['scale']}', seeds {', '.join(map(str, study['seeds']))}).** Test error (%) "
        "of each arm, mean ± sample std over seeds, and its penalty over the baseline at the same width "
        "(Welch 95 % CI). Widths: `paper` = the network as the scale runs it; the width presets multiply "
        "every stage's channels (params/experiments.yaml). Params reduced: against the dense net of the "
        "arm's own arch (a thinned dense net reduces nothing against itself: compare its params).",
        "",
        "| arm | width | n | test error | params | params reduced (%) | penalty over the baseline (pt) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["seeds"]:
            lines.append(f"| {r['arm']} | {r['width']} | 0 | (not run) | | | |")
            continue
        penalty = (
            "–"
            if r["penalty_mean"] is None
            else f"{r['penalty_mean']:+.2f} [{r['penalty_ci_low']:+.2f}, {r['penalty_ci_high']:+.2f}]"
        )
        lines.append(
            f"| {r['arm']} | {r['width']} | {r['seeds']} | {r['test_error_mean']:.2f} ± {r['test_error_std']:.2f} | "
            f"{r['params_mean']:,.0f} | {r['params_reduced_pct_mean']:.1f} | {penalty} |"
        )
    return "\n".join(lines) + "\n"


def write_gap_study(registry: dict, results: str | Path, out: ScaleOutputs) -> list[dict]:
    """``gap_study.{csv,md}`` under the tables and the penalty-vs-width figure under the figures."""
    from .figures import fig_gap_study

    rows = gap_rows(registry, results)
    atomic_write_text(out.tables / "gap_study.csv", render_csv(rows))
    atomic_write_text(out.tables / "gap_study.md", render_markdown(rows, registry))
    fig_gap_study(rows, registry["gap_study"]["widths"], out.figures / "gap_study")
    return rows
