"""Reduced-gradient descent on simplex-constrained group assignments (supp. eq. 2, SimpleMKL).

An assignment matrix has groups on dim 0 and nodes on dim 1; every node column is a point
of the probability simplex and is updated on its own.  The reduced gradient moves along the
simplex: for the column's largest entry mu it is ``dJ/dd_m - dJ/dd_mu`` for the other entries,
and ``red_mu`` balances them so the column sum stays 1 (Rakotomamonjy et al. 2008).

Two update rules:

* ``"paper"``: supp. eq. 2 with the largest admissible step, ``step = min(lr, gamma_max)``;
  no momentum, so columns never leave the simplex.
* ``"official"``: dalgu90/splitnet-imagenet22k ``resnet.py`` ``build_train_op`` plus the
  "validity" op of its ``train.py``: a scaled reduced gradient fed to SGD momentum, then every
  entry clamped to >= 1e-5 and each column renormalised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

RULES = ("paper", "official")
OFFICIAL_EPS = 1e-5  # the official zero test and clamp floor


def reduced_gradient(value: Tensor, grad: Tensor, zero_tol: float = 0.0) -> Tensor:
    """Reduced gradient of every column of ``value`` (G x D) given ``grad = dJ/dvalue``.

    With mu the argmax of the column (first one on ties) and ``g1 = grad - grad[mu]``:
    ``red_m = g1_m``, except 0 where ``value_m <= zero_tol`` and ``g1_m > 0`` (an entry at the
    boundary that would shrink further is held); ``red_mu = -sum_{m != mu} red_m``.

    Eq. 2 leaves open the case of a zero entry with ``g1_m <= 0`` (it may grow); like the
    authors' code it keeps ``red_m = g1_m`` and includes it in ``red_mu``, so every column of
    the result sums to 0 and a step along it stays on the simplex's affine hull.
    """
    mu = value.argmax(dim=0, keepdim=True)
    g1 = grad - grad.gather(0, mu)
    g1 = g1.masked_fill((value <= zero_tol) & (g1 > 0), 0.0)
    return g1.scatter(0, mu, -g1.sum(0, keepdim=True))  # g1[mu] is 0, so the sum is over m != mu


def _boundary_steps(value: Tensor, red: Tensor) -> Tensor:
    """Step at which each entry reaches 0 along ``-red`` (``value / red`` where red > 0, else inf)."""
    return torch.where(red > 0, value / red, torch.full_like(value, float("inf")))


def max_admissible_step(value: Tensor, red: Tensor) -> Tensor:
    """Per column, the largest step along ``-red`` keeping every entry >= 0 (inf if unbounded)."""
    return _boundary_steps(value, red).amin(dim=0)


def _paper_update(value: Tensor, red: Tensor, lr: float) -> None:
    """``value -= min(lr, gamma_max) * red``, with entries that reach the boundary set to exactly 0."""
    boundary = _boundary_steps(value, red)
    step = boundary.amin(dim=0).clamp(max=lr)
    value.sub_(step * red)
    # value - (value/red)*red is not exactly 0 in floating point; a leftover 1e-9 would pin
    # the next steps to ~1e-9.  The entries whose boundary step equals the step taken are the
    # ones that hit 0.
    value.masked_fill_(boundary <= step, 0.0)
    _project(value, 0.0)


def _official_update(value: Tensor, red: Tensor, lr: float, momentum: float, state: dict) -> None:
    """Official ImageNet-22k rule: clip-scale, momentum SGD, clamp to 1e-5 and renormalise."""
    gamma_max = max_admissible_step(value, red)
    scale = torch.where(gamma_max < lr, gamma_max / lr, torch.ones_like(gamma_max))
    red = red * scale
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = state["momentum_buffer"] = red.clone()
    else:
        buf.mul_(momentum).add_(red)
    value.sub_(lr * buf)
    _project(value, OFFICIAL_EPS)


def _project(value: Tensor, floor: float) -> None:
    """Clamp entries to ``>= floor`` and rescale each column to sum 1 (removes drift)."""
    value.clamp_(min=floor)
    value.div_(value.sum(0, keepdim=True))


class SimplexReducedGradient(torch.optim.Optimizer):
    """Reduced-gradient optimizer for G x D assignment matrices with simplex columns.

    ``rule="paper"`` ignores ``momentum``.  Parameters without a gradient (frozen assignments)
    are skipped.  ``lr`` is read from each param group at every step, so schedulers work; the
    official rule's momentum buffers live in ``self.state`` and are checkpointed.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, rule: str = "paper") -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, rule=rule))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["rule"] not in RULES:
            raise ValueError(f"reduced-gradient rule must be one of {RULES}, got {group['rule']!r}")
        for p in group["params"]:
            if p.dim() != 2:
                raise ValueError(f"assignment parameters must be G x D matrices, got shape {tuple(p.shape)}")

    # override ignored below: torch's stub types the closure's loss as float; ours returns the loss tensor
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            official = group["rule"] == "official"
            for p in group["params"]:
                if p.grad is None:
                    continue
                red = reduced_gradient(p, p.grad, OFFICIAL_EPS if official else 0.0)
                if official:
                    _official_update(p, red, group["lr"], group["momentum"], self.state[p])
                else:
                    _paper_update(p, red, group["lr"])
        return loss
