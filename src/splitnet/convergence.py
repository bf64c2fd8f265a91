"""Has the grouping converged? Measured per assignment variable, every epoch.

A column (node) is *sharp* when its largest group probability exceeds ``SHARP`` (0.9): the node
has effectively chosen a group. A variable has converged when at least ``CONVERGED`` (90 %) of
its columns are sharp; the grouping has converged when every variable has. A split cut from an
unconverged grouping follows the initial noise rather than anything learned, so the split
stage says so and records it (``assignment_converged`` < 0.9).
"""

from __future__ import annotations

import torch

from .partition import fuzzy_fraction

SHARP = 0.9
CONVERGED = 0.9


def sharp_fraction(matrix: torch.Tensor, level: float = SHARP) -> float:
    """Fraction of columns (nodes) of a G x D assignment whose largest entry exceeds ``level``."""
    return float((matrix.max(dim=0).values > level).float().mean())


def convergence_metrics(matrices: dict[str, torch.Tensor], fuzzy_threshold: float) -> dict[str, float]:
    """Per variable ``sharp/<name>`` and ``fuzzy/<name>``, plus ``assignment_converged``: the
    smallest sharp fraction over the variables (>= CONVERGED means every variable converged)."""
    row: dict[str, float] = {}
    for name, matrix in matrices.items():
        row[f"sharp/{name}"] = sharp_fraction(matrix)
        row[f"fuzzy/{name}"] = fuzzy_fraction(matrix, fuzzy_threshold)
    row["assignment_converged"] = min(v for k, v in row.items() if k.startswith("sharp/"))
    return row


def steps_to_convergence(trace: list[tuple[int, dict[str, float]]]) -> dict[str, int | None]:
    """Steps until each variable (and ``all``) first reached CONVERGED sharp columns; None: never.

    ``trace`` holds (step, :func:`convergence_metrics`) pairs in step order, measured every
    ``group.convergence_every`` steps, which is the resolution.
    """
    names = sorted({k[len("sharp/") :] for _, row in trace for k in row if k.startswith("sharp/")})
    steps: dict[str, int | None] = {}
    for name in [*names, "all"]:
        key = "assignment_converged" if name == "all" else f"sharp/{name}"
        steps[name] = next((step for step, row in trace if row.get(key, 0.0) >= CONVERGED), None)
    return steps
