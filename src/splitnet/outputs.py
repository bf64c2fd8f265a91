"""Where a scale's outputs go: everything under ``<results>/<scale>/``, so scales never collide.

One source of truth for the pipeline (workflow/rules/*.smk) and the commands that read or write
those files (``splitnet tables | figures | track``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .config import row_seeds

TABLE_FORMATS = ("md", "tex", "csv")
FIGURE_FORMATS = ("png", "pdf")


def study_name(extended: bool) -> str:
    """The grouping study's file stem: its default part, or its extended datasets (``extended:
    true``, run with ``--config extended_study=True``), which are tabled on their own."""
    return "grouping_study_extended" if extended else "grouping_study"


class ScaleOutputs:
    def __init__(self, results: str | Path, scale: str) -> None:
        self.root = Path(results) / scale
        self.runs = self.root / "runs"  # one directory per row, seed and stage (run_dir)
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self.tables = self.root / "tables"
        self.figures = self.root / "figures"
        self.summary = self.root / "metrics" / "summary.json"  # the DVC metrics file: every table cell
        self.per_seed = self.root / "metrics" / "per_seed.csv"  # every number the claims read, per seed
        self.tracking = self.root / "tracking.json"  # counts of the last MLflow import

    def run_dir(self, experiment: str, seed: int | str, stage: str) -> Path:
        return run_dir(self.runs, experiment, seed, stage)

    def table_files(self, registry: dict) -> list[Path]:
        tables = [self.tables / f"{t}.{ext}" for t in registry["tables"] for ext in TABLE_FORMATS]
        return [
            *tables,
            self.tables / "class_groups.md",
            self.tables / "arch_check.md",
            self.tables / "arch_check.csv",
            self.summary,
            self.per_seed,
        ]

    def claims_files(self) -> list[Path]:
        return [self.tables / "claims.md", self.tables / "claims.csv"]

    def study_files(self, extended: bool = False) -> list[Path]:
        """The grouping study's (or its extended part's) table and class-group figure (``splitnet study``)."""
        name = study_name(extended)
        return [
            self.tables / f"{name}.csv",
            self.tables / f"{name}.md",
            *(self.figures / f"{name}.{ext}" for ext in FIGURE_FORMATS),
        ]

    def figure_files(self, registry: dict) -> list[Path]:
        return [self.figures / f"{name}.{ext}" for name in registry["figures"] for ext in FIGURE_FORMATS]


def run_dir(runs: Path, experiment: str, seed: int | str, stage: str) -> Path:
    """``<runs>/<experiment>/seed_<seed>/<stage>/`` (Snakemake passes the seed wildcard as text)."""
    return Path(runs) / experiment / f"seed_{seed}" / stage


def figure_rows(registry: dict) -> list[str]:
    """The experiments whose grouping runs the figures read."""
    return sorted({exp for runs in registry["figures"].values() for exp in runs.values()})


def table_runs(
    registry: dict, scale: str, claim_rows: Iterable[str] = (), extra_seeds: bool = False
) -> list[tuple[str, int]]:
    """(row, seed) of every evaluate run ``splitnet tables`` reads: the rows of the tables, figures
    and claims, each over its seeds (``config.row_seeds``)."""
    rows = {row["experiment"] for table in registry["tables"].values() for row in table["rows"]}
    rows |= set(figure_rows(registry)) | set(claim_rows)
    return [(exp, seed) for exp in sorted(rows) for seed in row_seeds(registry, exp, scale, extra_seeds)]
