"""Shared pytest fixtures and helpers."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial affine params and running stats, so equivalence tests see them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator))
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
