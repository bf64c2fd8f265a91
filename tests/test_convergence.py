"""Convergence measures of the assignment matrices (G x D, columns on the simplex)."""

from __future__ import annotations

import torch

from splitnet.convergence import convergence_metrics, sharp_fraction, steps_to_convergence


def test_sharp_fraction_counts_columns_above_the_level():
    a = torch.tensor([[0.95, 0.5, 0.05, 0.9], [0.05, 0.5, 0.95, 0.1]])
    assert sharp_fraction(a) == 0.5  # 0.9 itself is not above 0.9
    assert sharp_fraction(torch.full((4, 10), 0.25)) == 0.0


def test_converged_is_the_least_converged_variable():
    sharp = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    uniform = torch.full((2, 5), 0.5)
    row = convergence_metrics({"a": sharp, "b": uniform}, fuzzy_threshold=0.1)
    assert row["sharp/a"] == 1.0 and row["sharp/b"] == 0.0
    assert row["fuzzy/a"] == 0.0 and row["fuzzy/b"] == 1.0
    assert row["assignment_converged"] == 0.0


def test_steps_to_convergence_per_variable_and_overall():
    trace = [
        (50, {"sharp/a": 0.5, "sharp/b": 0.1, "assignment_converged": 0.1}),
        (100, {"sharp/a": 0.92, "sharp/b": 0.4, "assignment_converged": 0.4}),
        (150, {"sharp/a": 0.95, "sharp/b": 0.91, "assignment_converged": 0.91}),
    ]
    assert steps_to_convergence(trace) == {"a": 100, "b": 150, "all": 150}
    assert steps_to_convergence(trace[:2]) == {"a": 100, "b": None, "all": None}
