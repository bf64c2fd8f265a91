"""Downscaling of uint8 image batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_CHUNK = 8192  # images per interpolate call: bounds the float copy to a few hundred MB


def resize_area(images: torch.Tensor, side: int) -> torch.Tensor:
    """Resize uint8 ``N x C x H x W`` images to ``side x side`` by area averaging, rounded to uint8.

    Area interpolation averages whole source pixels, the right filter for shrinking (no
    aliasing); rounding keeps the stored data uint8.
    """
    if images.shape[-2:] == (side, side):
        return images
    parts = [
        F.interpolate(chunk.float(), size=(side, side), mode="area").round_().clamp_(0, 255).to(torch.uint8)
        for chunk in images.split(_CHUNK)
    ]
    return torch.cat(parts)
