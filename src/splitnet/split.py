"""Cut a grouped Wide ResNet into a ``SplitWideResNet`` (a tree of real, smaller branches).

Choices (see docs/splitnet.md):

* ``convention`` — what the first layers of a split stage (unit 0's shortcut and conv1) read:
  ``shared`` (default): every branch reads *all* channels of its parent branch (the whole trunk
  for the lowest split stage).  This "tree" reading reproduces the paper's Params/FLOPs columns.
  ``partitioned``: each branch reads only the channels its learned input vector assigns to it,
  as the official ``resnet_split.py`` does.  The fc always reads its learned partition.
* ``layout`` — how split units are rebuilt:
  ``preact`` (default): the grouping network's pre-activation units, BN copied by channel, so a
  network whose inter-group weights are zero is *exactly* the split one.
  ``official``: the official code's post-activation split units with fresh BN (kernels copied).

Every branch keeps its channels in an order that makes its children's inputs contiguous
whenever they are disjoint, so most channel selections are slices, not gathers.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .branches import ChannelSelect, HeadBranch, SplitWideResNet, StageBranch, Trunk
from .model import PostActUnit, PreActUnit, WideResNet, WRNPlan, batch_norm, build_stage, conv, copy_batch_norm, linear
from .partition import Partition
from .spec import SplitSpec, even_merge_indices
from .topology import HEAD, SplitLayer, Topology, stage_hidden, stage_in, stage_out

CONVENTIONS = ("shared", "partitioned")
LAYOUTS = ("preact", "official")


def _check(convention: str, layout: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _expand_to_children(parent_rows: torch.Tensor, spec: SplitSpec, segment: int) -> torch.Tensor:
    """Row g = the parent-group row that group g of ``segment`` hangs under."""
    parents = even_merge_indices(spec.groups[segment], spec.groups[segment - 1])
    return parent_rows[parents]


def stream_membership(topology: Topology, partition: Partition, segment: int) -> torch.Tensor:
    """Membership (G x width) of the output stream of conv segment ``segment`` (0-based stage)."""
    spec = topology.spec
    width = topology.plan.stages[segment].width
    if spec.groups[segment] == 1:
        return torch.ones(1, width, dtype=torch.bool)
    return partition[stage_out(segment + 1)]


def input_membership(topology: Topology, partition: Partition, segment: int, convention: str) -> torch.Tensor:
    """Which of the previous stream's channels each group of ``segment`` reads."""
    spec = topology.spec
    if segment == HEAD:
        return partition["head_in"]
    if convention == "partitioned":
        return partition[stage_in(segment + 1)]
    parent = stream_membership(topology, partition, segment - 1) if segment > 0 else None
    if parent is None:
        return torch.ones(spec.groups[segment], topology.plan.stem_width, dtype=torch.bool)
    return (
        _expand_to_children(parent, spec, segment)
        if spec.groups[segment - 1] > 1
        else parent.expand(spec.groups[segment], -1)
    )


def layer_memberships(
    topology: Topology, partition: Partition, layer: SplitLayer, convention: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) membership of one split layer, honouring the input convention."""
    if layer.reads_stage_input:
        segment = int(layer.path.split(".")[1])
        inputs = input_membership(topology, partition, segment, convention)
    else:
        inputs = partition[layer.input]
    return inputs, partition[layer.output]


def keep_mask(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Dense-equivalent mask (D_out x D_in) of a split layer.

    Weight (o, i) survives iff every group that holds output o also reads input i, so each copy
    of a duplicated (overlap) node computes the same value as the dense node.
    """
    misses = outputs.T.float() @ (~inputs).float()
    return misses == 0


@torch.no_grad()
def zero_intergroup_weights(
    model: WideResNet, topology: Topology, partition: Partition, convention: str = "shared"
) -> None:
    """Zero every weight the split drops, in place: the dense model then computes exactly
    what the split network computes (used to test the split and to define it)."""
    _check(convention, "preact")
    for layer in topology.layers:
        inputs, outputs = layer_memberships(topology, partition, layer, convention)
        weight = model.get_parameter(f"{layer.path}.weight")
        mask = keep_mask(inputs, outputs).to(weight.device)
        weight.mul_(mask.view(*mask.shape, *([1] * (weight.dim() - 2))))


def _members(row: torch.Tensor) -> torch.Tensor:
    return row.nonzero().flatten()


def _local_order(stream: torch.Tensor, child_inputs: list[torch.Tensor]) -> torch.Tensor:
    """Order a branch's stream channels (global indices) so disjoint child inputs are contiguous."""
    members = set(stream.tolist())
    order: list[int] = []
    used: set[int] = set()
    for child in child_inputs:
        c = child.tolist()
        if used.intersection(c):
            return stream
        order += c
        used.update(c)
    return torch.tensor(order + sorted(members - used), dtype=torch.long)


def _select(parent_order: torch.Tensor, row: torch.Tensor) -> tuple[ChannelSelect, torch.Tensor]:
    """Channels of a child in its parent's local order: (selector, their global indices)."""
    inside = row[parent_order]
    return ChannelSelect(inside.nonzero().flatten(), len(parent_order)), parent_order[inside]


@torch.no_grad()
def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d, out_idx: torch.Tensor, in_idx: torch.Tensor) -> None:
    dst.weight.copy_(src.weight[out_idx][:, in_idx])


class _Builder:
    """Builds the module tree of one split network, copying the kept weights from ``dense`` if given."""

    def __init__(
        self, topology: Topology, partition: Partition, convention: str, layout: str, dense: WideResNet | None
    ) -> None:
        self.topology = topology
        self.partition = partition
        self.convention = convention
        self.layout = layout
        self.dense = dense
        self.spec: SplitSpec = topology.spec
        self.plan: WRNPlan = topology.plan
        self.class_pieces: list[torch.Tensor] = []  # each head's classes, in build order

    def children_of(self, segment: int, group: int) -> list[int]:
        following = segment + 1
        parents = even_merge_indices(self.spec.groups[following], self.spec.groups[segment])
        return [child for child in range(self.spec.groups[following]) if parents[child] == group]

    def stage_width_in(self, segment: int) -> int:
        return self.plan.stem_width if segment == 0 else self.plan.stages[segment - 1].width

    def branch(self, segment: int, group: int, parent_order: torch.Tensor) -> nn.Module:
        in_row = input_membership(self.topology, self.partition, segment, self.convention)[group]
        select, in_idx = _select(parent_order, in_row)
        if segment == HEAD:
            return self.head(select, in_idx, group)
        children = self.children_of(segment, group)
        next_inputs = input_membership(self.topology, self.partition, segment + 1, self.convention)
        stream = _members(stream_membership(self.topology, self.partition, segment)[group])
        order = _local_order(stream, [_members(next_inputs[child]) for child in children])
        units = self.units(segment, group, in_idx, order)
        final_bn = None
        if segment == HEAD - 1:
            final_bn = batch_norm(len(order))
            if self.dense is not None:
                copy_batch_norm(final_bn, self.dense.final_bn, order)
        branches = [self.branch(segment + 1, child, order) for child in children]
        return StageBranch(select, units, final_bn, branches)

    def units(self, segment: int, group: int, in_idx: torch.Tensor, stream: torch.Tensor) -> nn.Sequential:
        stage = self.plan.stages[segment]
        units: list[nn.Module] = []
        for u in range(len(stage.hidden)):
            hidden = _members(self.partition[stage_hidden(segment + 1, u)][group])
            src_idx = in_idx if u == 0 else stream
            stride = stage.stride if u == 0 else 1
            unit_args = (len(src_idx), len(hidden), len(stream), stride, u == 0)
            unit: PreActUnit | PostActUnit = (
                PreActUnit(*unit_args) if self.layout == "preact" else PostActUnit(*unit_args)
            )
            if self.dense is not None:
                ref = cast(PreActUnit, self.dense.get_submodule(f"stages.{segment}.{u}"))  # WideResNet units
                _copy_conv(unit.conv1, ref.conv1, hidden, src_idx)
                _copy_conv(unit.conv2, ref.conv2, stream, hidden)
                if u == 0:
                    if unit.shortcut is None or ref.shortcut is None:
                        raise ValueError(
                            f"stage {segment + 1} is split, so its first unit needs a 1x1 projection "
                            "shortcut in the dense network (an identity cannot be cut into groups)"
                        )
                    _copy_conv(unit.shortcut, ref.shortcut, stream, src_idx)
                if self.layout == "preact":  # official layout: fresh BN, as resnet_split.py
                    copy_batch_norm(unit.bn1, ref.bn1, src_idx)
                    copy_batch_norm(unit.bn2, ref.bn2, hidden)
            units.append(unit)
        return nn.Sequential(*units)

    def head(self, select: ChannelSelect, in_idx: torch.Tensor, group: int) -> HeadBranch:
        classes = _members(self.partition["head_out"][group])
        fc = linear(len(in_idx), len(classes))
        if self.dense is not None:
            with torch.no_grad():
                fc.weight.copy_(self.dense.fc.weight[classes][:, in_idx])
                fc.bias.copy_(self.dense.fc.bias[classes])
        self.class_pieces.append(classes)
        return HeadBranch(select, fc)

    def trunk(self, first: int) -> tuple[Trunk, int]:
        """The unsplit layers below segment ``first``.

        Built exactly as a reload builds them, then loaded from ``dense``: a deep copy would carry
        the dense net's ``requires_grad`` flags (``bn_no_scale`` gammas frozen), device and mode
        into the split network, which then trains differently from its saved-and-reloaded self.
        """
        plan = self.plan
        widths = [plan.stem_width] + [stage.width for stage in plan.stages]
        stem = conv(plan.in_channels, plan.stem_width, 3)
        stages = nn.ModuleList(build_stage(widths[i], plan.stages[i]) for i in range(first))
        final_bn = batch_norm(widths[-1]) if first == HEAD else None
        trunk = Trunk(stem, stages, final_bn)
        if self.dense is not None:
            stem.load_state_dict(self.dense.stem.state_dict())
            for stage, dense_stage in zip(stages, self.dense.stages):
                stage.load_state_dict(dense_stage.state_dict())
            if final_bn is not None:
                final_bn.load_state_dict(self.dense.final_bn.state_dict())
        width = self.stage_width_in(first) if first < HEAD else plan.stages[-1].width
        return trunk, width


def build_split_network(
    topology: Topology,
    partition: Partition,
    convention: str = "shared",
    layout: str = "preact",
    dense: WideResNet | None = None,
) -> SplitWideResNet:
    """Build the split network; copy the kept weights from ``dense`` when given.

    Without ``dense`` the branches are freshly initialised, which is how a saved split network
    is rebuilt before ``load_state_dict``.  With it, the same fresh tree gets the copied values
    and nothing else, so the network (in training mode, every parameter trainable, on the CPU)
    trains exactly as the file it is saved to will after reloading.
    """
    _check(convention, layout)
    first = topology.spec.first_split
    if first is None:
        raise ValueError(f"split {topology.spec.code} splits nothing (every segment has one group)")
    if dense is not None and dense.plan != topology.plan:
        raise ValueError("the dense model's architecture differs from the topology's")
    builder = _Builder(topology, partition, convention, layout, dense)
    trunk, width = builder.trunk(first)
    order = torch.arange(width)
    roots = [builder.branch(first, group, order) for group in range(topology.spec.groups[first])]
    return SplitWideResNet(trunk, roots, torch.cat(builder.class_pieces), topology.plan.num_classes)
