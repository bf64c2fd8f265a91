"""Hard partitions: which nodes each group keeps when the network is cut.

A partition of one vector is a boolean *membership* matrix ``M`` (G x D): ``M[g, n]`` says that
group ``g`` holds node ``n``.  Disjoint splits have exactly one True per column; the overlap
variant (supp. section 4.1) duplicates fuzzy nodes into every group above a threshold.
"""

from __future__ import annotations

import warnings

import torch

from .spec import even_merge_indices
from .topology import Topology

Partition = dict[str, torch.Tensor]  # vector name -> G x D bool membership

EMPTY_GROUP_POLICIES = ("repair", "error")


class EmptyGroupError(RuntimeError):
    """A group won no node, so its branch would have zero width."""


def argmax_membership(a: torch.Tensor) -> torch.Tensor:
    """One-hot membership of each column's largest entry; ties go to the lowest group index."""
    # torch.argmax returns the first maximal index, which is the documented tie rule.
    winner = a.argmax(dim=0)
    return torch.nn.functional.one_hot(winner, a.shape[0]).T.bool()


def overlap_membership(a: torch.Tensor, threshold: float) -> torch.Tensor:
    """Argmax group plus every group whose assignment exceeds ``threshold`` (fuzzy nodes)."""
    return argmax_membership(a) | (a > threshold)


def fuzzy_fraction(a: torch.Tensor, threshold: float) -> float:
    """Fraction of nodes with more than one group above ``threshold``."""
    return float(((a > threshold).sum(0) > 1).float().mean())


def repair_empty_groups(membership: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Give every empty group one node: the node with the highest assignment to that group
    among the nodes whose (only) group has more than one member.  Deterministic.

    Returns the repaired membership and the number of nodes moved.
    """
    membership = membership.clone()
    moved = 0
    for g in range(membership.shape[0]):
        if membership[g].any():
            continue
        sizes = membership.sum(1)
        donors = (membership & (sizes[:, None] > 1)).any(0) & (membership.sum(0) == 1)
        if not donors.any():
            raise EmptyGroupError(f"cannot repair empty group {g}: no group can spare a node")
        score = torch.where(donors, a[g], torch.full_like(a[g], -float("inf")))
        n = int(score.argmax())
        membership[:, n] = False
        membership[g, n] = True
        moved += 1
    return membership, moved


def merge_membership(membership: torch.Tensor, groups: int) -> torch.Tensor:
    """Supergroup membership: union of its subgroups (official ``_merge_split_idxs``)."""
    n = membership.shape[0]
    if n == groups:
        return membership
    index = even_merge_indices(n, groups)
    return torch.stack([membership[[h for h in range(n) if index[h] == s]].any(0) for s in range(groups)])


def balanced_membership(groups: int, size: int) -> torch.Tensor:
    """Contiguous groups of (almost) equal size; the first groups take the remainder."""
    owner = torch.tensor(even_merge_indices(size, groups)) if size >= groups else None
    if owner is None:
        raise EmptyGroupError(f"cannot split {size} nodes into {groups} non-empty groups")
    return torch.nn.functional.one_hot(owner, groups).T.bool()


def random_balanced_membership(groups: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """SplitNet-Random: a random permutation of the nodes cut into balanced groups."""
    perm = torch.randperm(size, generator=generator)
    return balanced_membership(groups, size)[:, perm.argsort()]


def partition_from_assignments(
    topology: Topology,
    matrices: dict[str, torch.Tensor],
    overlap_threshold: float | None = None,
    empty_groups: str = "repair",
) -> tuple[Partition, dict[str, int]]:
    """Cut every variable by argmax (plus fuzzy duplicates when ``overlap_threshold`` is set),
    then derive merged vectors from their sources.

    Returns the partition and, per vector, how many nodes were moved to fill empty groups.
    """
    if empty_groups not in EMPTY_GROUP_POLICIES:
        raise ValueError(f"empty_groups must be one of {EMPTY_GROUP_POLICIES}, got {empty_groups!r}")
    partition: Partition = {}
    repairs: dict[str, int] = {}
    for v in topology.variables():
        a = matrices[v.name].detach().float().cpu()
        m = argmax_membership(a) if overlap_threshold is None else overlap_membership(a, overlap_threshold)
        empty = [g for g in range(v.groups) if not m[g].any()]
        if empty:
            if empty_groups == "error":
                raise EmptyGroupError(
                    f"assignment {v.name}: group(s) {empty} won no node; train longer with the "
                    f"balance term (gamma_balance) or split with empty_groups='repair'"
                )
            m, repairs[v.name] = repair_empty_groups(m, a)
            warnings.warn(
                f"assignment {v.name}: moved {repairs[v.name]} node(s) into empty group(s) {empty}", stacklevel=2
            )
        partition[v.name] = m
    return complete_partition(topology, partition), repairs


def complete_partition(topology: Topology, variables: Partition) -> Partition:
    """Add merged vectors (stage output streams) to a partition of the variables."""
    out = dict(variables)
    for v in topology.vectors.values():
        if v.source is not None:
            out[v.name] = merge_membership(out[v.source], v.groups)
    return {name: out[name] for name in topology.vectors}


def balanced_partition(topology: Topology) -> Partition:
    """Equal contiguous groups for every variable (the paper's balanced-count check)."""
    return complete_partition(topology, {v.name: balanced_membership(v.groups, v.size) for v in topology.variables()})


def random_partition(topology: Topology, seed: int) -> Partition:
    """SplitNet-Random: a random balanced partition of every variable."""
    gen = torch.Generator().manual_seed(seed)
    return complete_partition(
        topology, {v.name: random_balanced_membership(v.groups, v.size, gen) for v in topology.variables()}
    )
