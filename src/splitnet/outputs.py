"""Where a scale's outputs go: everything under ``<results>/<scale>/``, so scales never collide.

One source of truth for the pipeline (workflow/rules/*.smk) and the commands that read or write
those files (``splitnet tables | figures | track``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TABLE_FORMATS = ("md", "tex", "csv")
FIGURE_FORMATS = ("png", "pdf")


@dataclass(frozen=True)
class ScaleOutputs:
    results: Path
    scale: str

    def __init__(self, results: str | Path, scale: str) -> None:
        object.__setattr__(self, "results", Path(results))
        object.__setattr__(self, "scale", scale)

    @property
    def root(self) -> Path:
        return self.results / self.scale

    @property
    def runs(self) -> Path:
        """One directory per row and stage: ``runs/<experiment>/<stage>/``."""
        return self.root / "runs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def summary(self) -> Path:
        """The DVC metrics file: every table cell of every row."""
        return self.root / "metrics" / "summary.json"

    @property
    def tracking(self) -> Path:
        """Counts of the last MLflow import."""
        return self.root / "tracking.json"

    def table_files(self, registry: dict) -> list[Path]:
        tables = [self.tables / f"{t}.{ext}" for t in registry["tables"] for ext in TABLE_FORMATS]
        return tables + [self.tables / "class_groups.md", self.tables / "arch_check.md",
                         self.tables / "arch_check.csv", self.summary]

    def figure_files(self, registry: dict) -> list[Path]:
        return [self.figures / f"{name}.{ext}" for name in registry["figures"] for ext in FIGURE_FORMATS]


def figure_rows(registry: dict) -> list[str]:
    """The experiments whose grouping runs the figures read."""
    return sorted({exp for runs in registry["figures"].values() for exp in runs.values()})
