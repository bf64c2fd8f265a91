"""Pre-activation Wide ResNet exactly as the official SplitNet code builds it.

``init_conv`` (3x3, 16 ch) -> 3 stages of ``n`` units (widths 16k, 32k, 64k; strides 1, 2, 2)
-> BN-ReLU -> global mean -> fc.  A unit is BN-ReLU-(dropout)-conv3x3-BN-ReLU-(dropout)-conv3x3
plus a shortcut: a 1x1 projection of the *activated* input when the unit changes width or
stride, the raw input otherwise.  Init: conv ``N(0, sqrt(1/(k*k*C_in)))``, fc ``N(0, sqrt(1/D_in))``,
bias 0; BN momentum 0.1 / eps 1e-5; ``bn_no_scale`` freezes gamma = 1 in the unit BNs (not in the
final BN).  Dropout is applied only in the stages/fc that a grouping run will split.

Widths are data (:class:`StagePlan`), so the same class also holds SSL-pruned networks whose
layers have arbitrary widths.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

STEM_WIDTH = 16
BN_MOMENTUM = 0.1  # TF moving-average decay 0.9
BN_EPS = 1e-5
_ARCH_RE = re.compile(r"^wrn-(\d+)-(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class StagePlan:
    """Widths of one stage: its residual stream and the hidden width of each unit."""

    width: int
    hidden: tuple[int, ...]
    stride: int
    projection: bool = True  # does the first unit have a 1x1 shortcut conv?


@dataclass(frozen=True)
class WRNPlan:
    in_channels: int
    num_classes: int
    stages: tuple[StagePlan, ...]
    stem_width: int = STEM_WIDTH
    name: str = field(default="wrn", compare=False)


def wrn_plan(depth: int, width: float, in_channels: int = 3, num_classes: int = 100) -> WRNPlan:
    """The plan of WRN-depth-width (depth = 6n + 4).

    A fractional width factor gives a thinned WRN (stage widths ``round(16k)``, ``round(32k)``,
    ``round(64k)``; the stem stays 16): the gap study's dense nets with a split net's param count.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    if width < 1 / 16:
        raise ValueError(f"WRN width factor must be >= 1/16 (one channel in the first stage), got {width}")
    n = (depth - 4) // 6
    stages, prev = [], STEM_WIDTH
    for w, stride in ((round(16 * width), 1), (round(32 * width), 2), (round(64 * width), 2)):
        stages.append(StagePlan(w, (w,) * n, stride, projection=(w != prev or stride != 1)))
        prev = w
    return WRNPlan(in_channels, num_classes, tuple(stages), name=f"wrn-{depth}-{width:g}")


def parse_arch(arch: str) -> tuple[int, float]:
    """``"wrn-16-8"`` -> (16, 8.0); ``"wrn-10-0.75"`` -> (10, 0.75), a thinned WRN."""
    match = _ARCH_RE.match(arch.strip().lower())
    if not match:
        raise ValueError(f"architecture {arch!r} is not of the form wrn-<depth>-<width>, e.g. wrn-16-8 or wrn-10-0.75")
    return int(match.group(1)), float(match.group(2))


def canonical_arch(arch: str) -> str:
    """The name :func:`wrn_plan` gives ``arch``'s network: ``"WRN-10-1.0"`` -> ``"wrn-10-1"``."""
    depth, width = parse_arch(arch)
    return f"wrn-{depth}-{width:g}"


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    layer = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
    nn.init.normal_(layer.weight, 0.0, math.sqrt(1.0 / (kernel * kernel * c_in)))
    return layer


def linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.normal_(layer.weight, 0.0, math.sqrt(1.0 / d_in))
    nn.init.zeros_(layer.bias)
    return layer


def batch_norm(channels: int, frozen_scale: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if frozen_scale:
        bn.weight.requires_grad_(False)
    return bn


@torch.no_grad()
def copy_batch_norm(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, channels: torch.Tensor) -> None:
    """Copy the affine parameters and running statistics of ``channels`` (BN is per channel)."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[channels])
    assert dst.num_batches_tracked is not None and src.num_batches_tracked is not None  # both track statistics
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


class PreActUnit(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with an identity or 1x1-projection shortcut."""

    def __init__(
        self,
        c_in: int,
        hidden: int,
        c_out: int,
        stride: int,
        projection: bool,
        bn_no_scale: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not projection and (c_in != c_out or stride != 1):
            raise ValueError("an identity shortcut needs equal widths and stride 1")
        self.bn1 = batch_norm(c_in, bn_no_scale)
        self.conv1 = conv(c_in, hidden, 3, stride)
        self.bn2 = batch_norm(hidden, bn_no_scale)
        self.conv2 = conv(hidden, c_out, 3)
        self.shortcut = conv(c_in, c_out, 1, stride) if projection else None
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.dropout(F.relu(self.bn1(x)), self.dropout, self.training)
        skip = x if self.shortcut is None else self.shortcut(a)
        h = F.dropout(F.relu(self.bn2(self.conv1(a))), self.dropout, self.training)
        return self.conv2(h) + skip


class PostActUnit(nn.Module):
    """The official code's *split* unit: conv-BN-ReLU-conv-BN, add, ReLU (post-activation).

    The shortcut is a 1x1 conv of the raw input (``projection``) or the identity.
    """

    def __init__(self, c_in: int, hidden: int, c_out: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1 = conv(c_in, hidden, 3, stride)
        self.bn1 = batch_norm(hidden)
        self.conv2 = conv(hidden, c_out, 3)
        self.bn2 = batch_norm(c_out)
        self.shortcut = conv(c_in, c_out, 1, stride) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + skip)


def build_stage(c_in: int, plan: StagePlan, bn_no_scale: bool = False, dropout: float = 0.0) -> nn.Sequential:
    units = []
    for u, hidden in enumerate(plan.hidden):
        first = u == 0
        units.append(
            PreActUnit(
                c_in if first else plan.width,
                hidden,
                plan.width,
                plan.stride if first else 1,
                projection=plan.projection if first else False,
                bn_no_scale=bn_no_scale,
                dropout=dropout,
            )
        )
    return nn.Sequential(*units)


class WideResNet(nn.Module):
    """Dense pre-activation WRN.  ``dropout_stages`` holds 1-based stage numbers."""

    def __init__(
        self,
        plan: WRNPlan,
        bn_no_scale: bool = False,
        dropout: float = 0.0,
        dropout_stages: tuple[int, ...] = (),
        dropout_fc: bool = False,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.stem = conv(plan.in_channels, plan.stem_width, 3)
        stages, c_in = [], plan.stem_width
        for s, stage in enumerate(plan.stages, start=1):
            p = dropout if s in dropout_stages else 0.0
            stages.append(build_stage(c_in, stage, bn_no_scale, p))
            c_in = stage.width
        self.stages = nn.ModuleList(stages)
        self.final_bn = batch_norm(c_in)
        self.fc = linear(c_in, plan.num_classes)
        self.dropout_fc = dropout if dropout_fc else 0.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features fed to the fc."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return F.relu(self.final_bn(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.features(x), self.dropout_fc, self.training)
        return self.fc(h)


def wide_resnet(arch: str = "wrn-16-8", in_channels: int = 3, num_classes: int = 100, **kwargs) -> WideResNet:
    """Build ``WideResNet`` from a name such as ``"wrn-16-8"``."""
    depth, width = parse_arch(arch)
    return WideResNet(wrn_plan(depth, width, in_channels, num_classes), **kwargs)
