"""How much of a grouping's weight lies in its diagonal blocks: Fig. 2's claim as a number.

After grouping, R_W has pushed the inter-group weights (off the diagonal blocks of each split
layer, under its hard assignment) towards zero.  ``block_weight_excess`` measures it: for each
split layer, the share of its squared weights inside the diagonal blocks minus the share of
entries those blocks hold (what the weights would have there with no concentration), averaged
over the layers.  0 = no concentration; 1 - (entry share) = everything inside the blocks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .artifacts import load_artifact, plan_from_dict
from .assignment import merge_rows
from .spec import SplitSpec, even_merge_indices
from .topology import Topology, build_topology


def vector_matrix(topology: Topology, assignments: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The G x D assignment matrix of a vector (a merged vector sums its source's rows)."""
    vector = topology.vectors[name]
    if vector.source is None:
        return assignments[name]
    return merge_rows(assignments[vector.source], vector.groups)


def intra_block_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, g_out: int, g_in: int) -> torch.Tensor:
    """(out x in) booleans: the connections inside a diagonal block.  When the layer leaves G_in
    supergroups for G_out subgroups (a hierarchical split), a subgroup's block is its supergroup's."""
    if g_out > g_in:
        out_groups = torch.tensor(even_merge_indices(g_out, g_in))[out_groups]
    elif g_in > g_out:
        in_groups = torch.tensor(even_merge_indices(g_in, g_out))[in_groups]
    return out_groups[:, None] == in_groups[None, :]


def layer_excess(weight: torch.Tensor, out_assign: torch.Tensor, in_assign: torch.Tensor) -> float:
    """Share of the squared weight inside the diagonal blocks minus the blocks' share of entries."""
    energy = weight.float().pow(2)
    energy = energy.sum((2, 3)) if energy.dim() == 4 else energy  # per (output, input) connection
    mask = intra_block_mask(out_assign.argmax(0), in_assign.argmax(0), out_assign.shape[0], in_assign.shape[0])
    total = float(energy.sum())
    if total == 0.0:
        return 0.0
    return float(energy[mask].sum()) / total - float(mask.float().mean())


def block_weight_excess(grouping_model: Path) -> float:
    """The mean :func:`layer_excess` over the split layers of a learn-groups model file."""
    blob = load_artifact(grouping_model)
    topology = build_topology(plan_from_dict(blob["plan"]), SplitSpec.parse(blob["split"]))
    mats, state = blob["assignments"], blob["state_dict"]
    excess = [
        layer_excess(
            state[f"{layer.path}.weight"],
            vector_matrix(topology, mats, layer.output),
            vector_matrix(topology, mats, layer.input),
        )
        for layer in topology.layers
    ]
    return sum(excess) / len(excess)
