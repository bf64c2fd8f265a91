"""Every number the claims read, one row per (experiment, seed): ``metrics/per_seed.csv``.

Committed with the reference results, so that every verdict of ``claims.csv`` can be recomputed
from the repository alone (the claims are computed from this table, never from the run files).
"""

from __future__ import annotations

import csv
import json
import math
from functools import cache
from pathlib import Path

from .block_weights import block_weight_excess
from .io import atomic_write_text, csv_text
from .metrics import semantic_ari
from .model import wide_resnet
from .outputs import run_dir
from .records import check_recorded
from .spec import SplitSpec
from .summary import summarize

METRICS = (
    "test_error",  # %
    "params_reduced_pct",
    "flops_reduced_pct",
    "ari",  # class groups against the superclasses (best merge with fewer groups)
    "steps_to_convergence",  # every assignment variable converged (empty: never)
    "block_weight_excess",  # block_weights.py (grouping rows)
    "balanced_params_reduced_pct",  # the same split of the same network with balanced groups (split rows)
)
COLUMNS = ("experiment", "seed", *METRICS)


@cache
def balanced_params_reduced_pct(arch: str, input_shape: tuple[int, int, int], classes: int, split: str) -> float:
    """Params % reduced of ``split`` on ``arch`` with balanced groups (counted, as the arch check does)."""
    dense = wide_resnet(arch, in_channels=input_shape[0], num_classes=classes)
    return summarize(dense, SplitSpec.parse(split), input_shape)["params_reduced_pct"]


def record(runs_dir: Path, experiment: str, seed: int) -> dict:
    """The row of one finished run (its evaluate metrics, and its grouping model if it has one)."""
    metrics = json.loads((run_dir(runs_dir, experiment, seed, "evaluate") / "metrics.json").read_text())
    groups = metrics.get("groups", {})
    grouping = metrics.get("grouping", {})
    row: dict = {
        "experiment": experiment,
        "seed": seed,
        "test_error": metrics["test_error"],
        "params_reduced_pct": metrics["params_reduced_pct"],
        "flops_reduced_pct": metrics["flops_reduced_pct"],
        "ari": semantic_ari(groups),
        "steps_to_convergence": grouping.get("steps_to_convergence", {}).get("all"),
        "block_weight_excess": None,
        "balanced_params_reduced_pct": None,
    }
    grouping_model = run_dir(runs_dir, experiment, seed, "learn_groups") / "model.pt"
    if grouping and grouping_model.is_file():
        check_recorded(grouping_model)  # the bytes its learn-groups run recorded, or a one-line error
        row["block_weight_excess"] = block_weight_excess(grouping_model)
    if metrics.get("split") and groups:
        shape = tuple(metrics["input_shape"])
        row["balanced_params_reduced_pct"] = balanced_params_reduced_pct(
            metrics["arch"], (shape[0], shape[1], shape[2]), len(groups["class_to_group"]), metrics["split"]
        )
    return row


def collect(runs_dir: Path, runs: list[tuple[str, int]]) -> list[dict]:
    """The rows of every finished run among ``runs`` ((experiment, seed) pairs)."""
    return [
        record(runs_dir, exp, seed)
        for exp, seed in runs
        if (run_dir(runs_dir, exp, seed, "evaluate") / "metrics.json").is_file()
    ]


def write_csv(path: Path, rows: list[dict]) -> None:
    # floats at full precision (repr): every verdict recomputes exactly from the file
    atomic_write_text(path, csv_text(COLUMNS, rows, digits=None))


def read_csv(path: Path) -> list[dict]:
    """The rows of a ``per_seed.csv``: numbers as floats (seed as int), empty cells as None."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict = {"experiment": raw["experiment"], "seed": int(raw["seed"])}
            for metric in METRICS:
                text = raw[metric]
                row[metric] = float(text) if text else None
                if row[metric] is not None and not math.isfinite(row[metric]):
                    raise ValueError(f"{path}: {metric} of {raw['experiment']} seed {raw['seed']} is not finite")
            rows.append(row)
    return rows
