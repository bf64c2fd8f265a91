"""Which worker runs which branches of a split network.

A split network is a trunk and a tree of branches; every leaf (an fc ``HeadBranch``) produces
the logits of its classes.  Workers get contiguous runs of leaves in depth-first order, so each
worker's branches form whole subtrees where the tree allows it.  A worker holds the trunk and
every branch on the paths from the trunk to its leaves: a branch whose leaves lie on several
workers (e.g. a stage-2 branch of ``2-4-4`` on 4 workers) is *replicated*, each copy computing
the same activations.  That costs no latency: the stage-3 branches need that output before
they start, wherever it is computed; and it needs no activation traffic between workers.

Runs are chosen to minimise the FLOPs of the busiest worker (dynamic programming over the
split points), counted with ``counting.count_model`` on one image.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import cast

from ..branches import HeadBranch, SplitWideResNet, StageBranch
from ..counting import count_model


@dataclass(frozen=True)
class BranchNode:
    """One branch of the tree: its module path in the split network and the leaves below it."""

    name: str  # e.g. "roots.0.branches.1"
    module: StageBranch | HeadBranch
    depth: int
    leaves: range  # indices of the leaves below it, depth-first

    @property
    def is_leaf(self) -> bool:
        return isinstance(self.module, HeadBranch)


def branch_nodes(split: SplitWideResNet) -> list[BranchNode]:
    """Every branch, depth-first (parents before children; leaves in the order of the logits)."""
    nodes: list[BranchNode] = []
    leaf_count = 0

    def visit(module: StageBranch | HeadBranch, name: str, depth: int) -> None:
        nonlocal leaf_count
        index = len(nodes)
        first_leaf = leaf_count
        nodes.append(BranchNode(name, module, depth, range(0)))  # leaves filled in below
        if isinstance(module, HeadBranch):
            leaf_count += 1
        else:
            for i, child in enumerate(module.branches):
                visit(cast(StageBranch | HeadBranch, child), f"{name}.branches.{i}", depth + 1)
        nodes[index] = BranchNode(name, module, depth, range(first_leaf, leaf_count))

    for i, root in enumerate(split.roots):
        visit(cast(StageBranch | HeadBranch, root), f"roots.{i}", 0)
    return nodes


def own_flops(split: SplitWideResNet, nodes: list[BranchNode], input_shape: tuple[int, int, int]) -> list[int]:
    """FLOPs of each branch's own layers (children excluded) for one ``input_shape`` image."""
    layers = count_model(split, input_shape).layers
    costs = []
    for node in nodes:
        prefix = node.name + "."
        costs.append(
            sum(
                r.flops
                for r in layers
                if r.name.startswith(prefix) and not r.name[len(prefix) :].startswith("branches.")
            )
        )
    return costs


@dataclass(frozen=True)
class Placement:
    """Leaves of each worker (contiguous runs, depth-first) and the branches each one holds."""

    ranges: tuple[range, ...]

    @property
    def workers(self) -> int:
        return len(self.ranges)

    def holders(self, node: BranchNode) -> tuple[int, ...]:
        """Workers holding ``node``: those with at least one of its leaves."""
        return tuple(
            r for r, run in enumerate(self.ranges) if run.start < node.leaves.stop and node.leaves.start < run.stop
        )

    def load(self, nodes: list[BranchNode], costs: list[int], rank: int) -> int:
        return sum(c for node, c in zip(nodes, costs) if rank in self.holders(node))


def place(nodes: list[BranchNode], costs: list[int], workers: int) -> Placement:
    """Contiguous leaf runs, one per worker, minimising the busiest worker's FLOPs."""
    leaves = sum(node.is_leaf for node in nodes)
    if not 1 <= workers <= leaves:
        raise ValueError(f"the split network has {leaves} leaf branches: use 1 to {leaves} workers, not {workers}")

    def run_cost(start: int, stop: int) -> int:
        return sum(c for node, c in zip(nodes, costs) if node.leaves.start < stop and start < node.leaves.stop)

    # best[k][j]: (busiest load, cut points) when the first j leaves go to k workers
    best: list[dict[int, tuple[int, tuple[int, ...]]]] = [{0: (0, ())}]
    for k in range(1, workers + 1):
        row: dict[int, tuple[int, tuple[int, ...]]] = {}
        for j in range(k, leaves - (workers - k) + 1):
            row[j] = min(
                (max(best[k - 1][i][0], run_cost(i, j)), best[k - 1][i][1] + (i,)) for i in best[k - 1] if i < j
            )
        best.append(row)
    cuts = best[workers][leaves][1] + (leaves,)
    return Placement(tuple(range(a, b) for a, b in pairwise(cuts)))
