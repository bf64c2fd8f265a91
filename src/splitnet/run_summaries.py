"""What a tracking store shows of run records: time series, and a table row's key settings.

Read by the MLflow importer (:mod:`splitnet.mlflow_import`); the records themselves are
:mod:`splitnet.records`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from splitnet.config import SPLIT_METHODS
from splitnet.spec import SplitSpec


def iso_to_ms(stamp: str) -> int:
    """Milliseconds since the epoch, the unit MLflow uses for all times."""
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def metric_points(record: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) of the history, then the final metrics.

    Final metrics go at the last history step; one equal to the history value already
    there is not repeated (a metric point logged twice would be a duplicate row).
    """
    started = iso_to_ms(record["started"])
    points: list[tuple[str, float, int, int]] = []
    seen: set[tuple[str, int, float]] = set()
    for entry in record["history"]:
        stamp = iso_to_ms(entry["time"]) if entry.get("time") else started
        for key, value in entry["metrics"].items():
            points.append((key, float(value), stamp, int(entry["step"])))
            seen.add((key, int(entry["step"]), float(value)))
    last_step = record["history"][-1]["step"] if record["history"] else 0
    end = iso_to_ms(record["finished"]) if record["finished"] else started
    for key, value in record["metrics"].items():
        if (key, last_step, float(value)) not in seen:
            points.append((key, float(value), end, last_step))
    return points


# A row's key settings, for comparing rows: name -> (flattened config key, methods it describes;
# None: every method). A setting that does not act on a row (the gammas of the baseline) is left
# out, as is the simplex rule of a softmax grouping.
ROW_PARAMS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "method": ("method", None),
    "scale": ("scale", None),
    "arch": ("model.arch", None),
    "dropout": ("model.dropout", None),
    "seed": ("engine.seed", None),
    "split": ("group.split", SPLIT_METHODS),
    "parametrisation": ("group.parametrisation", ("splitnet",)),
    "simplex_rule": ("group.simplex_rule", ("splitnet",)),
    "assignment_lr_scale": ("group.assignment_lr_scale", ("splitnet",)),
    "gamma_disjoint": ("group.gamma_disjoint", ("splitnet",)),
    "gamma_weight": ("group.gamma_weight", ("splitnet",)),
    "gamma_balance": ("group.gamma_balance", ("splitnet",)),
    "overlap_threshold": ("group.overlap.threshold", ("splitnet",)),
    "ssl_strength": ("ssl.strength", ("ssl",)),
    "ssl_strength_scale": ("ssl.strength_scale", ("ssl",)),  # the strength used = strength x this
}
EVALUATE_OUTPUT = "metrics.json"  # the evaluate stage's output; it names the dataset used


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}``; non-string leaves (lists too) as JSON text."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def groups_per_level(split: str) -> str:
    """Group counts of the split levels: ``2`` for 1-2-2 and 2-2-2, ``4`` for 1-1-4, ``2-4``
    for 2-4-4 (2 supergroups, then 4 groups)."""
    levels = dict.fromkeys(g for g in SplitSpec.parse(split).groups if g > 1)
    return "-".join(map(str, levels)) or "1"


def row_params(records: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, str]:
    """A table row's key settings from its (record file, record) pairs; later stages win.

    The configs give the settings (see :data:`ROW_PARAMS`) and ``G`` is derived from the
    split; no stage config holds the data section, so the dataset comes from the evaluate
    stage's output, which names the data it was measured on.
    """
    config: dict[str, str] = {}
    for _, record in records:
        config.update(flatten_config(record["config"]))
    method = config.get("method")
    params = {
        name: config[key]
        for name, (key, methods) in ROW_PARAMS.items()
        if key in config and (methods is None or method in methods)
    }
    if params.get("parametrisation") != "simplex":
        params.pop("simplex_rule", None)
    if "split" in params:
        params["G"] = groups_per_level(params["split"])
    for path, record in records:
        output = path.parent / EVALUATE_OUTPUT
        if EVALUATE_OUTPUT in record["artifacts"] and output.is_file():
            dataset = json.loads(output.read_text()).get("dataset")
            if dataset:
                params["dataset"] = str(dataset)
    return params
