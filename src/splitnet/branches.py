"""Modules of a split network: a shared trunk and a tree of branches with real, smaller layers.

Every branch reads a subset of its parent's output channels (``ChannelSelect``: nothing, a
contiguous slice, or a gather), runs its own units on them, and hands its output to its
children.  Leaves are fc branches that produce the logits of their classes;
``SplitWideResNet`` puts those back into the original class order.  No masks: a branch's
tensors only hold the weights it keeps.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class ChannelSelect(nn.Module):
    """Pick channels (dim 1) of the parent's output by local position."""

    index: torch.Tensor | None  # buffer

    def __init__(self, positions: torch.Tensor, parent_width: int) -> None:
        super().__init__()
        positions = positions.long()
        n = len(positions)
        start = int(positions[0]) if n else 0
        self.parent_width = parent_width
        self.width = n
        self.identity = n == parent_width and bool((positions == torch.arange(n)).all())
        contiguous = n > 0 and bool((positions == torch.arange(start, start + n)).all())
        self.start = start if contiguous else None
        # A gather only when the channels are scattered (overlap duplicates, shared inputs).
        self.register_buffer("index", None if contiguous else positions, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        y = (
            x.narrow(1, self.start, self.width)
            if self.start is not None
            else x.index_select(1, cast(torch.Tensor, self.index))
        )
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # A channel slice of an NHWC tensor is strided; convs would fall back to NCHW.
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    def extra_repr(self) -> str:
        if self.identity:
            return f"all {self.width}"
        if self.start is not None:
            return f"[{self.start}:{self.start + self.width}] of {self.parent_width}"
        return f"gather {self.width} of {self.parent_width}"


class Trunk(nn.Module):
    """Stem plus the unsplit stages; pools the features too when only the fc is split."""

    def __init__(self, stem: nn.Module, stages: nn.ModuleList, final_bn: nn.Module | None) -> None:
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.final_bn = final_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if self.final_bn is not None:
            x = F.relu(self.final_bn(x)).mean((2, 3))
        return x


class StageBranch(nn.Module):
    """One group of a split stage: its units, the final BN-ReLU-pool if it is the last stage,
    and its child branches."""

    def __init__(
        self, select: ChannelSelect, units: nn.Sequential, final_bn: nn.Module | None, children: list[nn.Module]
    ) -> None:
        super().__init__()
        self.select = select
        self.units = units
        self.final_bn = final_bn
        self.branches = nn.ModuleList(children)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.units(self.select(x))
        if self.final_bn is not None:
            h = F.relu(self.final_bn(h)).mean((2, 3))
        return [logits for child in self.branches for logits in child(h)]


class HeadBranch(nn.Module):
    """One group of the split fc: logits of its own classes."""

    def __init__(self, select: ChannelSelect, fc: nn.Linear) -> None:
        super().__init__()
        self.select = select
        self.fc = fc

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.fc(self.select(x))]


class SplitWideResNet(nn.Module):
    """Trunk -> tree of branches -> logits in the original class order.

    ``class_index`` lists the class of every leaf output column (leaves in depth-first order).
    A class produced by several leaves (overlap variant) gets the mean of its copies.
    """

    class_index: torch.Tensor  # buffers
    class_counts: torch.Tensor
    inverse: torch.Tensor

    def __init__(self, trunk: Trunk, roots: list[nn.Module], class_index: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.roots = nn.ModuleList(roots)
        self.num_classes = num_classes
        counts = torch.bincount(class_index, minlength=num_classes)
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"classes {missing} are produced by no branch")
        self.duplicated = bool((counts > 1).any())
        self.register_buffer("class_index", class_index)
        self.register_buffer("class_counts", counts.float())
        self.register_buffer("inverse", class_index.argsort())

    @property
    def stem(self) -> nn.Module:
        return self.trunk.stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        logits = torch.cat([out for root in self.roots for out in root(h)], dim=1)
        if not self.duplicated:
            return logits.index_select(1, self.inverse)
        summed = logits.new_zeros(logits.shape[0], self.num_classes).index_add(1, self.class_index, logits)
        return summed / self.class_counts
