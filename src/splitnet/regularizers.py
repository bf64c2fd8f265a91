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
from collections.abc import Sequence
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


def _scaled_square_taps(weight: Tensor) -> Tensor:
    """``Wbar[j, i] / sigma^2``: the tap-averaged squared weight over the squared init std, i.e.
    ``D_in * sum over the k*k taps of weight^2`` (fc: ``D_in * weight^2``). Folding sigma into Wbar
    (R_W is homogeneous of degree 1 in sqrt(Wbar)) lets layers with different k share one batch."""
    if weight.dim() == 4:
        return weight.pow(2).sum(dim=(2, 3)) * weight.shape[1]
    if weight.dim() == 2:
        return weight.pow(2) * weight.shape[1]
    raise ValueError(f"expected a conv [D_out, D_in, k, k] or fc [D_out, D_in] weight, got shape {tuple(weight.shape)}")


def weight_split_penalties(weights: Sequence[Tensor], ps: Sequence[Tensor], qs: Sequence[Tensor]) -> Tensor:
    """Normalised R_W (``S_layer`` of the official code) of layers whose weights share D_out and
    D_in and whose assignments share G, computed as one batch: a tensor of one value per layer.

    With ``P`` (G x D_in) and ``Q`` (G x D_out) a layer's input/output assignments and
    ``Wbar`` its tap-averaged squared weight (D_out x D_in):

    * ``row_g = 1/(D_in sqrt(D_out)) * sum_i |1-P[g,i]| * sqrt(sum_j Q[g,j]^2 Wbar[j,i])``
      (l2,1 norm over input rows of the weights from outside group g into group g);
    * ``col_g = 1/(sqrt(D_in) D_out) * sum_j |1-Q[g,j]| * sqrt(sum_i P[g,i]^2 Wbar[j,i])``
      (the same over output columns: weights from group g to outside it);
    * ``S = sum_g (row_g + col_g) / (2 (G-1) sigma / G)``, sigma the init std
      (``sqrt(1/(k*k*D_in))`` conv, ``sqrt(1/D_in)`` fc), so ``S ~= 1`` for uniform P, Q at init.
    """
    wbar = torch.stack([_scaled_square_taps(w) for w in weights])  # [L, D_out, D_in], over sigma^2
    p, q = torch.stack(list(ps)), torch.stack(list(qs))  # [L, G, D_in], [L, G, D_out]
    _, d_out, d_in = wbar.shape
    groups = p.shape[1]
    if p.shape[1:] != (groups, d_in) or q.shape[1:] != (groups, d_out):
        raise ValueError(
            f"assignments P {tuple(p.shape[1:])} and Q {tuple(q.shape[1:])} do not match a weight with "
            f"D_in={d_in}, D_out={d_out} and a common group count"
        )
    if groups < 2:
        raise ValueError("the weight-split penalty needs at least 2 groups")
    row_norms = _safe_sqrt(q.pow(2) @ wbar)  # [L, G, D_in]
    col_norms = _safe_sqrt(p.pow(2) @ wbar.transpose(1, 2))  # [L, G, D_out]
    row = ((1 - p).abs() * row_norms).sum(dim=(1, 2)) / (d_in * math.sqrt(d_out))
    col = ((1 - q).abs() * col_norms).sum(dim=(1, 2)) / (math.sqrt(d_in) * d_out)
    return (row + col) * (groups / (2 * (groups - 1)))


def weight_split_penalty(weight: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """Normalised R_W of one layer (see :func:`weight_split_penalties`)."""
    return weight_split_penalties([weight], [p], [q])[0]


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

    def gammas(self) -> tuple[float, float, float]:
        """The strengths in the order of :func:`split_terms`: (R_D, R_W, R_E)."""
        return self.gamma_disjoint, self.gamma_weight, self.gamma_balance

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


def split_terms(
    model: nn.Module, topology: Topology, matrices: dict[str, Tensor], weighted: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The three SplitNet regularizers, unscaled (each ~1 at init): (R_D, R_W, R_E).

    ``matrices`` maps every vector name (merged ones included) to its G x D assignment, as
    returned by ``GroupAssignments.matrices()``; ``weighted`` is ``RegularizerConfig.weighted``.
    Free of Python-side state, so ``torch.compile`` can fuse it into a few kernels (the grouping
    stage does when ``engine.compile`` is set: ~15 ops instead of ~600-1,000 eager ones).
    """
    if not topology.layers:
        ref = next(model.parameters(), None)
        zero = torch.zeros((), device=ref.device if ref is not None else None)
        return zero, zero, zero
    # R_W in one batch per (D_out, D_in, G): a few batched matmuls instead of two per layer. The
    # order of the layers does not matter: the weight term sums over them.
    batches: dict[tuple[int, int, int], list[SplitLayer]] = {}
    for layer in topology.layers:
        weight = cast(Tensor, model.get_submodule(layer.path).weight)
        batches.setdefault((weight.shape[0], weight.shape[1], matrices[layer.input].shape[0]), []).append(layer)
    per_layer = torch.cat(
        [
            weight_split_penalties(
                [cast(Tensor, model.get_submodule(layer.path).weight) for layer in layers],
                [matrices[layer.input] for layer in layers],
                [matrices[layer.output] for layer in layers],
            )
            for layers in batches.values()
        ]
    )
    weight = aggregate_weight_penalties(per_layer, weighted)
    weights = term_weights(topology)
    # Tensors: every split layer has at least one variable vector, so ``weights`` is not empty.
    disjoint = cast(Tensor, sum(w * disjoint_penalty(matrices[name]) for name, w in weights.items()))
    balance = cast(Tensor, sum(w * balance_penalty(matrices[name]) for name, w in weights.items()))
    return disjoint, weight, balance


def combine(terms: tuple[Tensor, Tensor, Tensor], config: RegularizerConfig) -> SplitLosses:
    """The gamma-weighted sum of :func:`split_terms`. A gamma of 0 leaves its term out of ``total``
    (as the official code does), so a non-finite unused term cannot poison the loss."""
    disjoint, weight, balance = terms
    used = [gamma * term for gamma, term in zip(config.gammas(), terms) if gamma != 0]
    total = sum(used[1:], used[0]) if used else torch.zeros_like(weight)
    return SplitLosses(disjoint, weight, balance, total)


def split_losses(
    model: nn.Module, topology: Topology, matrices: dict[str, Tensor], config: RegularizerConfig
) -> SplitLosses:
    """The three SplitNet regularizers of a model under a split topology, and their gamma-weighted
    sum (:func:`split_terms`, :func:`combine`)."""
    return combine(split_terms(model, topology, matrices, config.weighted), config)
