"""SSL baseline (Wen et al. 2016): group-lasso structured sparsity, then pruning to a smaller WRN.

Penalty: ``lambda * sum over unit convs of (sum of filter norms + sum of input-channel norms)``
plus the fc's input-channel (column) norms, so that whole channels can be driven to zero.

Pruning removes a channel only when *every layer that reads it* has (near-)zero weights for it,
which is exact: a hidden channel is read by its unit's conv2; a stage's residual stream channel
is read by the later units' conv1, the next stage's first unit (shortcut and conv1) or the fc.
(A channel whose *writers* are zero is not removable exactly: its pre-activation BN turns zero
into a constant.)  The stem's output, and a stage stream tied to it by an identity shortcut, are
never pruned (16 channels; negligible).  The result is an ordinary ``WideResNet`` with arbitrary
widths, counted like any other model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .model import PreActUnit, StagePlan, WideResNet, WRNPlan, copy_batch_norm

_TINY = 1e-12  # keeps the group norm differentiable at exactly zero


def _group_norms(weight: torch.Tensor, dim: int, tiny: float = 0.0) -> torch.Tensor:
    """L2 norm of each slice along ``dim`` (0: output filters, 1: input channels)."""
    w = weight.transpose(0, dim).flatten(1)
    return torch.sqrt(w.pow(2).sum(1) + tiny)


def group_lasso_penalty(model: WideResNet) -> torch.Tensor:
    """Sum of filter-wise and channel-wise group norms of every unit conv, plus fc columns."""
    total = model.fc.weight.new_zeros(())
    for unit in _units(model):
        for conv in (unit.conv1, unit.conv2, unit.shortcut):
            if conv is not None:
                total = total + _group_norms(conv.weight, 0, _TINY).sum() + _group_norms(conv.weight, 1, _TINY).sum()
    return total + _group_norms(model.fc.weight, 1, _TINY).sum()


def _units(model: WideResNet) -> list[PreActUnit]:
    return [unit for stage in _stages(model) for unit in stage]


def _stages(model: WideResNet) -> list[list[PreActUnit]]:
    """The units of each stage (a WideResNet's stages are Sequentials of ``PreActUnit``s)."""
    stages = cast(list[nn.Sequential], list(model.stages))
    return [cast(list[PreActUnit], list(stage)) for stage in stages]


@dataclass(frozen=True)
class KeptChannels:
    """Indices kept per stream (index 0 = stem output, s = stage s) and per unit hidden layer."""

    streams: tuple[torch.Tensor, ...]
    hidden: tuple[tuple[torch.Tensor, ...], ...]


def _keep(norms: torch.Tensor, threshold: float) -> torch.Tensor:
    kept = (norms >= threshold).nonzero().flatten()
    return kept if len(kept) else norms.argmax().view(1)  # never leave a layer with no channel


@torch.no_grad()
def channels_to_keep(model: WideResNet, threshold: float) -> KeptChannels:
    """Channels some reader still uses (reader column norm >= ``threshold``)."""
    plan = model.plan
    streams: list[torch.Tensor] = [torch.arange(plan.stem_width)]
    hidden: list[tuple[torch.Tensor, ...]] = []
    stages = _stages(model)
    for s, stage in enumerate(stages):
        hidden.append(tuple(_keep(_group_norms(u.conv2.weight, 1), threshold) for u in stage))
        if not plan.stages[s].projection:  # the identity ties this stream to the previous one
            streams.append(streams[-1])
            continue
        readers = [u.conv1.weight for u in stage[1:]]
        if s + 1 < len(stages):
            nxt = stages[s + 1][0]
            readers += [nxt.conv1.weight] + ([nxt.shortcut.weight] if nxt.shortcut is not None else [])
        else:
            readers.append(model.fc.weight)
        norms = torch.stack([_group_norms(w, 1) for w in readers]).amax(0)
        streams.append(_keep(norms, threshold))
    return KeptChannels(tuple(streams), tuple(hidden))


@torch.no_grad()
def zero_pruned_weights(model: WideResNet, kept: KeptChannels) -> None:
    """Zero the reader weights of every channel that pruning removes (the dense equivalent)."""

    def zero_columns(weight: torch.Tensor, keep: torch.Tensor) -> None:
        mask = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
        mask[keep] = True
        weight[:, ~mask] = 0

    for s, stage in enumerate(_stages(model)):
        for u, unit in enumerate(stage):
            zero_columns(unit.conv2.weight, kept.hidden[s][u])
            stream_in = kept.streams[s] if u == 0 else kept.streams[s + 1]
            zero_columns(unit.conv1.weight, stream_in)
            if unit.shortcut is not None:
                zero_columns(unit.shortcut.weight, stream_in)
    zero_columns(model.fc.weight, kept.streams[-1])


@torch.no_grad()
def prune(model: WideResNet, kept: KeptChannels) -> WideResNet:
    """A new, smaller ``WideResNet`` holding only the kept channels (weights and BN copied)."""
    plan = model.plan
    stages = tuple(
        StagePlan(len(kept.streams[s + 1]), tuple(len(h) for h in kept.hidden[s]), st.stride, st.projection)
        for s, st in enumerate(plan.stages)
    )
    small = WideResNet(WRNPlan(plan.in_channels, plan.num_classes, stages, plan.stem_width, name=f"{plan.name}-ssl"))
    small.stem.weight.copy_(model.stem.weight)
    for s, (big_stage, small_stage) in enumerate(zip(_stages(model), _stages(small))):
        for u, (big, little) in enumerate(zip(big_stage, small_stage)):
            c_in = kept.streams[s] if u == 0 else kept.streams[s + 1]
            c_out, h = kept.streams[s + 1], kept.hidden[s][u]
            copy_batch_norm(little.bn1, big.bn1, c_in)
            little.conv1.weight.copy_(big.conv1.weight[h][:, c_in])
            copy_batch_norm(little.bn2, big.bn2, h)
            little.conv2.weight.copy_(big.conv2.weight[c_out][:, h])
            if big.shortcut is not None:
                assert little.shortcut is not None  # same projection flags: both have one
                little.shortcut.weight.copy_(big.shortcut.weight[c_out][:, c_in])
    copy_batch_norm(small.final_bn, model.final_bn, kept.streams[-1])
    small.fc.weight.copy_(model.fc.weight[:, kept.streams[-1]])
    small.fc.bias.copy_(model.fc.bias)
    small.train(model.training)
    return small
