"""SplitNet group regularizers, normalised exactly as the official code does.

Paper terms (Kim et al. 2017, supp. section 2) and their code forms (``_add_split_loss`` in
dalgu90/splitnet-wrn ``utils.py``, identical in splitnet-imagenet22k):

* R_W, group weight regularization -> :func:`weight_split_penalty` (one value per split layer);
* R_D, disjoint assignment ("overlap loss") -> :func:`disjoint_penalty` (one value per matrix);
* R_E, balanced assignment ("uniform loss") -> :func:`balance_penalty` (one value per matrix).

Every term is divided by its value at initialisation (uniform assignments, weights at their
init std), so each is ~1 at the start of a grouping run and the gammas are comparable.
Weights use PyTorch layout: conv ``[D_out, D_in, k, k]``, fc ``[D_out, D_in]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import cast

import torch
from torch import Tensor, nn

from .topology import SplitLayer, Topology

# Floor inside every sqrt: sqrt has an infinite derivative at 0, and a group whose
# inter-group weights are exactly zero (e.g. after a perfect split) would otherwise give
# inf * 0 = NaN gradients.  Below the floor clamp_min passes no gradient; the value it adds
# (1e-10 per norm) is negligible.
_SQRT_FLOOR = 1e-20


def _safe_sqrt(x: Tensor) -> Tensor:
    return x.clamp_min(_SQRT_FLOOR).sqrt()


def _mean_square_taps(weight: Tensor) -> tuple[Tensor, int]:
    """``Wbar[j, i]`` = mean over the k*k taps of ``weight^2`` (fc: ``weight^2``), and k*k."""
    if weight.dim() == 4:
        return weight.pow(2).mean(dim=(2, 3)), weight.shape[2] * weight.shape[3]
    if weight.dim() == 2:
        return weight.pow(2), 1
    raise ValueError(f"expected a conv [D_out, D_in, k, k] or fc [D_out, D_in] weight, got shape {tuple(weight.shape)}")


def weight_split_penalty(weight: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """Normalised R_W of one layer (``S_layer`` of the official code).

    With ``P`` (G x D_in) and ``Q`` (G x D_out) the input/output assignments and
    ``Wbar`` the tap-averaged squared weight (D_out x D_in):

    * ``row_g = 1/(D_in sqrt(D_out)) * sum_i |1-P[g,i]| * sqrt(sum_j Q[g,j]^2 Wbar[j,i])``
      (l2,1 norm over input rows of the weights from outside group g into group g);
    * ``col_g = 1/(sqrt(D_in) D_out) * sum_j |1-Q[g,j]| * sqrt(sum_i P[g,i]^2 Wbar[j,i])``
      (the same over output columns: weights from group g to outside it);
    * ``S = sum_g (row_g + col_g) / (2 (G-1) sigma / G)``, sigma the init std
      (``sqrt(1/(k*k*D_in))`` conv, ``sqrt(1/D_in)`` fc), so ``S ~= 1`` for uniform P, Q at init.
    """
    wbar, taps = _mean_square_taps(weight)
    d_out, d_in = wbar.shape
    groups = p.shape[0]
    if p.shape != (groups, d_in) or q.shape != (groups, d_out):
        raise ValueError(
            f"assignments P {tuple(p.shape)} and Q {tuple(q.shape)} do not match a weight with "
            f"D_in={d_in}, D_out={d_out} and a common group count"
        )
    if groups < 2:
        raise ValueError("the weight-split penalty needs at least 2 groups")
    row_norms = _safe_sqrt(q.pow(2) @ wbar)  # [G, D_in]
    col_norms = _safe_sqrt(p.pow(2) @ wbar.T)  # [G, D_out]
    row = ((1 - p).abs() * row_norms).sum() / (d_in * math.sqrt(d_out))
    col = ((1 - q).abs() * col_norms).sum() / (math.sqrt(d_in) * d_out)
    sigma = math.sqrt(1.0 / (taps * d_in))
    return (row + col) / (2 * (groups - 1) * sigma / groups)


def disjoint_penalty(a: Tensor) -> Tensor:
    """Normalised R_D of one G x D assignment: ``T(A) = sum_{g<h} <A_g, A_h> / (D (G-1) / (2G))``.

    1 for uniform columns, 0 for one-hot columns.  The pair sum per node is
    ``((sum_g A[g,n])^2 - sum_g A[g,n]^2) / 2``.
    """
    groups, size = a.shape
    pairs = 0.5 * (a.sum(0).pow(2) - a.pow(2).sum(0)).sum()
    return pairs / (size * (groups - 1) / (2 * groups))


def balance_penalty(a: Tensor) -> Tensor:
    """Normalised R_E of one G x D assignment: ``U(A) = sum_g (sum_n A[g,n])^2 / (D^2 / G)``.

    1 when the group sizes are equal, G when every node sits in one group.
    """
    groups, size = a.shape
    return a.sum(1).pow(2).sum() / (size * size / groups)


@lru_cache(maxsize=64)
def _term_weights(layers: tuple[SplitLayer, ...], variables: frozenset[str]) -> tuple[tuple[str, float], ...]:
    entries: list[list[str]] = []
    seen: set[str] = set()
    for layer in layers:
        new = [n for n in dict.fromkeys((layer.input, layer.output)) if n in variables and n not in seen]
        seen.update(new)
        if new:
            entries.append(new)
    return tuple((name, 1.0 / (len(entries) * len(entry))) for entry in entries for name in entry)


def term_weights(topology: Topology) -> dict[str, float]:
    """Weight of each variable's T (and U) value in the official averaging.

    The official code calls ``_add_split_loss`` once per split layer in build order; each call
    registers its input and output matrices the first time they are seen (merged matrices are
    never registered) and contributes one entry, the mean of the newly registered matrices'
    values.  The loss is the mean over entries, i.e. ``sum_name weight[name] * T(name)``.
    """
    variables = frozenset(name for name, v in topology.vectors.items() if v.is_variable)
    return dict(_term_weights(topology.layers, variables))


@dataclass(frozen=True)
class RegularizerConfig:
    """Strengths of the three group regularizers.

    Official flag mapping (dalgu90/splitnet-wrn ``resnet.py`` usage, ``group.sh`` values):

    * ``gamma1`` = ``gamma_disjoint`` (1.0): the overlap term T, paper R_D;
    * ``gamma2`` = ``gamma_weight`` (1.0): the weight-split term S, paper R_W;
    * ``gamma3`` = ``gamma_balance`` (10.0): the uniform term U, paper R_E.

    The help strings of ``train.py`` swap gamma1 and gamma2; the usage above is what runs.
    ``weighted`` is ``--weighted_group_loss`` (on in ``group.sh``): layers are weighted by their
    own current S value, see :func:`split_losses`.
    """

    gamma_disjoint: float
    gamma_weight: float
    gamma_balance: float
    weighted: bool

    @classmethod
    def from_group(cls, group: dict) -> RegularizerConfig:
        """The strengths of a resolved ``group`` config section (params/experiments.yaml)."""
        return cls(**{f.name: group[f.name] for f in fields(cls)})


def warmed_up(config: RegularizerConfig, step: int, disjoint_warmup_steps: int) -> RegularizerConfig:
    """``config`` with gamma_disjoint ramped linearly from 0 over the first ``disjoint_warmup_steps``
    updates (0: no ramp). Near uniform assignments R_D amplifies whatever noise they start with;
    the ramp lets R_W, which follows the weights' structure, shape the groups first."""
    if not disjoint_warmup_steps or step >= disjoint_warmup_steps:
        return config
    return replace(config, gamma_disjoint=config.gamma_disjoint * step / disjoint_warmup_steps)


@dataclass
class SplitLosses:
    """Aggregated, unscaled regularizer values (each ~1 at init) and their gamma-weighted sum."""

    disjoint: Tensor
    weight: Tensor
    balance: Tensor
    total: Tensor


def aggregate_weight_penalties(values: Tensor, weighted: bool) -> Tensor:
    """Combine per-layer S values into the weight term.

    ``weighted`` (official ``weighted_group_loss``): ``sum_l sg(S_l) S_l / sum_l sg(S_l)`` with
    sg = stop-gradient, so the value is ``sum S^2 / sum S`` and each layer's gradient is scaled
    by its own share of S.  Otherwise the plain mean.
    """
    if not weighted:
        return values.mean()
    detached = values.detach()
    # S > 0 in practice (the sqrt floor); the clamp only keeps an all-zero case from giving 0/0.
    return (detached * values).sum() / detached.sum().clamp_min(torch.finfo(values.dtype).tiny)


def split_losses(
    model: nn.Module, topology: Topology, matrices: dict[str, Tensor], config: RegularizerConfig
) -> SplitLosses:
    """The three SplitNet regularizers of a model under a split topology.

    ``matrices`` maps every vector name (merged ones included) to its G x D assignment, as
    returned by ``GroupAssignments.matrices()``.  A gamma of 0 leaves its term out of ``total``
    (as the official code does), so a non-finite unused term cannot poison the loss.
    """
    if not topology.layers:
        ref = next(model.parameters(), None)
        zero = torch.zeros((), device=ref.device if ref is not None else None)
        return SplitLosses(zero, zero, zero, zero)

    per_layer = torch.stack(
        [
            weight_split_penalty(
                cast(Tensor, model.get_submodule(layer.path).weight), matrices[layer.input], matrices[layer.output]
            )
            for layer in topology.layers
        ]
    )
    weight = aggregate_weight_penalties(per_layer, config.weighted)
    weights = term_weights(topology)
    # Tensors: every split layer has at least one variable vector, so ``weights`` is not empty.
    disjoint = cast(Tensor, sum(w * disjoint_penalty(matrices[name]) for name, w in weights.items()))
    balance = cast(Tensor, sum(w * balance_penalty(matrices[name]) for name, w in weights.items()))

    total = torch.zeros_like(weight)
    for gamma, term in (
        (config.gamma_disjoint, disjoint),
        (config.gamma_weight, weight),
        (config.gamma_balance, balance),
    ):
        if gamma != 0:
            total = total + gamma * term
    return SplitLosses(disjoint, weight, balance, total)
