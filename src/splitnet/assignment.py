"""Soft group-assignment matrices (G x D, every column on the probability simplex).

Two parametrisations, selectable per experiment:

* ``softmax`` (the paper's CIFAR runs, supp. section 4.1): a logit matrix ``alpha ~ N(0, 0.01)`` and
  ``A = softmax(alpha, dim=0)``.  Trained by the same momentum SGD as the weights.
* ``simplex`` (supp. eq. 2, the authors' ImageNet-22k code): the matrix itself is the variable,
  initialised at ``1/G`` plus zero-mean noise ``N(0, 0.001)`` per column, and updated by the
  reduced gradient (``reduced_gradient.SimplexReducedGradient``).

Merged vectors (a stage's output stream) are not variables: their rows are sums of the source
vector's rows according to ``spec.even_merge_indices`` (columns still sum to one).
"""

from __future__ import annotations

import torch
from torch import nn

from .spec import even_merge_indices
from .topology import Topology

PARAMETRISATIONS = ("softmax", "simplex")


def merge_rows(matrix: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum the rows of a (N x D) matrix into ``groups`` supergroups (official even merge)."""
    n = matrix.shape[0]
    if n == groups:
        return matrix
    index = torch.tensor(even_merge_indices(n, groups), device=matrix.device)
    out = matrix.new_zeros(groups, matrix.shape[1])
    return out.index_add(0, index, matrix)


class GroupAssignments(nn.Module):
    """All assignment variables of one split, plus per-variable freeze flags (overlap runs)."""

    frozen: torch.Tensor  # buffer

    def __init__(self, topology: Topology, parametrisation: str = "softmax", generator: torch.Generator | None = None):
        super().__init__()
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"assignment parametrisation must be one of {PARAMETRISATIONS}, got {parametrisation!r}")
        self.topology = topology
        self.parametrisation = parametrisation
        self.values = nn.ParameterDict()
        for v in topology.variables():
            if parametrisation == "softmax":
                init = torch.randn(v.groups, v.size, generator=generator) * 0.01
            else:
                noise = torch.randn(v.groups, v.size, generator=generator) * 0.001
                init = 1.0 / v.groups + noise - noise.mean(0, keepdim=True)
            self.values[v.name] = nn.Parameter(init)
        self.register_buffer("frozen", torch.zeros(len(self.values), dtype=torch.bool))

    @property
    def names(self) -> list[str]:
        return list(self.values.keys())

    def matrix(self, name: str) -> torch.Tensor:
        """The soft assignment of a variable (softmax applied if needed)."""
        value = self.values[name]
        return torch.softmax(value, dim=0) if self.parametrisation == "softmax" else value

    def matrices(self) -> dict[str, torch.Tensor]:
        """Every vector of the topology, merged ones included, in topology order."""
        out = {name: self.matrix(name) for name in self.values}
        for v in self.topology.vectors.values():
            if v.source is not None:
                out[v.name] = merge_rows(out[v.source], v.groups)
        return {name: out[name] for name in self.topology.vectors}

    @torch.no_grad()
    def favour(self, name: str, groups: list[int], logit: float) -> None:
        """Start node ``i`` of a variable leaning to group ``groups[i]``: its logit there is raised by
        ``logit`` (softmax); simplex columns move to the same probabilities, keeping their noise."""
        value = self.values[name]
        nodes = torch.arange(value.shape[1])
        favoured = torch.tensor(groups)
        if self.parametrisation == "softmax":
            value[favoured, nodes] += logit
        else:
            target = torch.zeros_like(value)
            target[favoured, nodes] = logit
            value.add_(torch.softmax(target, dim=0) - 1.0 / value.shape[0])

    def is_frozen(self, name: str) -> bool:
        return bool(self.frozen[self.names.index(name)])

    def freeze(self, name: str) -> None:
        """Stop updating one variable (its gradient is dropped from then on)."""
        self.frozen[self.names.index(name)] = True
        self.apply_freeze()

    def apply_freeze(self) -> None:
        """Sync ``requires_grad`` with the freeze flags (call after loading a checkpoint)."""
        for flag, param in zip(self.frozen.tolist(), self.values.values()):
            param.requires_grad_(not flag)
            if flag:
                param.grad = None
