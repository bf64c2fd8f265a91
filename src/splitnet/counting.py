"""Parameters and FLOPs of the model that actually runs, in the official convention.

* conv: params ``C_in/groups * C_out * k * k`` (no bias), FLOPs ``2 * H_out * W_out * params``
  (2 x MACs at the output resolution);
* fc: params ``(D_in + 1) * D_out`` (bias counted), FLOPs ``2 * (D_in + 1) * D_out``;
* BN, ReLU, pooling, channel selection: not counted;
* the stem (``init_conv``) is reported separately and left out of the totals, as the official
  counters did (432 params / 0.88 MFLOPs for a 3-channel WRN).

Counts come from forward hooks on a real forward pass, so they describe exactly the modules
that run, and ``flop_counter_check`` cross-checks them against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import nn


@dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str  # "conv" | "fc"
    c_in: int
    c_out: int
    kernel: int
    stride: int
    out_hw: tuple[int, int]
    params: int
    flops: int
    counted: bool  # False for the stem


@dataclass(frozen=True)
class ModelCount:
    layers: tuple[LayerCount, ...]
    params: int
    flops: int
    stem_params: int
    stem_flops: int

    def as_dict(self) -> dict:
        return {
            "params": self.params,
            "flops": self.flops,
            "stem_params": self.stem_params,
            "stem_flops": self.stem_flops,
            "layers": [asdict(layer) for layer in self.layers],
        }


def _conv_count(name: str, m: nn.Conv2d, out: torch.Tensor, counted: bool) -> LayerCount:
    params = m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
    h, w = out.shape[-2:]
    macs = m.weight.numel() * h * w
    flops = 2 * macs + (h * w * m.out_channels * 2 if m.bias is not None else 0)
    return LayerCount(
        name, "conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], (h, w), params, flops, counted
    )


def _fc_count(name: str, m: nn.Linear, counted: bool) -> LayerCount:
    bias = 1 if m.bias is not None else 0
    params = (m.in_features + bias) * m.out_features
    return LayerCount(name, "fc", m.in_features, m.out_features, 1, 1, (1, 1), params, 2 * params, counted)


@torch.no_grad()
def count_model(model: nn.Module, input_shape: tuple[int, int, int]) -> ModelCount:
    """Count every conv and fc that runs on one ``input_shape`` (C, H, W) image.

    The model must expose its stem conv as ``model.stem`` (WideResNet and SplitWideResNet do).
    """
    stem = getattr(model, "stem", None)
    names = {m: n for n, m in model.named_modules()}
    records: list[LayerCount] = []

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        counted = module is not stem
        if isinstance(module, nn.Conv2d):
            records.append(_conv_count(names[module], module, output, counted))
        else:
            records.append(_fc_count(names[module], cast(nn.Linear, module), counted))  # hooked: Conv2d or Linear

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    kept = [r for r in records if r.counted]
    stem_rows = [r for r in records if not r.counted]
    return ModelCount(
        layers=tuple(records),
        params=sum(r.params for r in kept),
        flops=sum(r.flops for r in kept),
        stem_params=sum(r.params for r in stem_rows),
        stem_flops=sum(r.flops for r in stem_rows),
    )


@torch.no_grad()
def flop_counter_check(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(our FLOPs in FlopCounterMode's convention, FlopCounterMode's FLOPs) for one image.

    FlopCounterMode counts 2 x MACs of convs and matmuls but no bias adds, so our fc bias term
    ``2 * D_out`` is removed and the stem is added back before comparing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    ours = count_model(model, input_shape)
    expected = ours.flops + ours.stem_flops
    expected -= sum(2 * r.c_out for r in ours.layers if r.kind == "fc")
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    return expected, int(counter.get_total_flops())


def reduction_pct(value: int, baseline: int) -> float:
    """Percent reduced relative to the baseline."""
    return 100.0 * (baseline - value) / baseline
