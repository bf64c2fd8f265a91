"""Branch-parallel inference on one GPU: one CUDA stream per branch.

The trunk runs on the current stream; every branch runs on its own stream, which first waits
for its parent's stream, so sibling branches (and whole subtrees) can overlap on the GPU.
The current stream waits for every branch stream before concatenating the logits.

Memory safety without ``record_stream``: each stream belongs to one branch, starts by waiting
for its parent's stream (which waits for the current stream) and is waited for at the end of
the forward, so a block freed on any stream can only be reused by work ordered after every
reader of it (the deterministic ordering PyTorch recommends over ``record_stream``).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from ..branches import HeadBranch, SplitWideResNet, StageBranch
from .runner import class_order


class _Tap(nn.Module):
    """A child that hands its input back, so ``StageBranch.forward`` returns the branch's own
    output (its children then run on their own streams)."""

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        return [h]


class StreamSplit(nn.Module):
    """A CUDA ``SplitWideResNet`` for inference, its branches on concurrent streams."""

    def __init__(self, split: SplitWideResNet) -> None:
        super().__init__()
        device = next(split.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"StreamSplit runs a CUDA model; this one is on {device}")
        self.split = split
        self.device = device
        self._streams: dict[int, torch.cuda.Stream] = {}
        self._own: dict[int, StageBranch] = {}  # each StageBranch without its children (modules shared)

        def visit(branch: nn.Module) -> None:
            self._streams[id(branch)] = torch.cuda.Stream(device)
            if isinstance(branch, StageBranch):
                self._own[id(branch)] = StageBranch(branch.select, branch.units, branch.final_bn, [_Tap()])
                for child in branch.branches:
                    visit(child)

        for root in split.roots:
            visit(root)

    def _run(self, branch: nn.Module, x: torch.Tensor, parent: torch.cuda.Stream, outs: list[torch.Tensor]) -> None:
        stream = self._streams[id(branch)]
        stream.wait_stream(parent)
        with torch.cuda.stream(stream):
            if isinstance(branch, HeadBranch):
                outs.extend(branch(x))
                return
            (h,) = self._own[id(branch)](x)
        for child in cast(StageBranch, branch).branches:  # a HeadBranch returned above
            self._run(child, h, stream, outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.split.trunk(x)
        main = torch.cuda.current_stream(self.device)
        outs: list[torch.Tensor] = []  # leaf logits, depth-first as SplitWideResNet concatenates them
        for root in self.split.roots:
            self._run(root, h, main, outs)
        for stream in self._streams.values():
            main.wait_stream(stream)
        return class_order(self.split, torch.cat(outs, dim=1))
