"""Batched, on-device augmentation and normalisation (no DataLoader, no worker processes).

Train batches: reflect-pad ``pad`` pixels, random crop back to the original size (offsets
0..2*pad; the official code's 0..2*pad-1 was an off-by-one, reference section 7 item 7), random
horizontal flip.  Normalisation: ``per_image`` standardisation (official: each image's own
channel mean/std) or ``dataset`` mean/std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMALIZATIONS = ("per_image", "dataset")


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 or float batch ``B x C x H x W``; returns float32."""
    x = images.float()
    b, _, h, w = x.shape
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (2, b), device=x.device, generator=generator)
        rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = x[batch, chans, rows, cols]
    if flip:
        mirror = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x


class Normalizer:
    """Maps float images to network inputs."""

    def __init__(self, kind: str, train_images: torch.Tensor | None = None) -> None:
        if kind not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {kind!r}")
        self.kind = kind
        self.mean = self.std = None
        if kind == "dataset":
            if train_images is None:
                raise ValueError("dataset normalization needs the training images")
            x = train_images.float()
            self.mean = x.mean((0, 2, 3), keepdim=True)
            self.std = x.std((0, 2, 3), keepdim=True).clamp_min(1e-6)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "dataset":
            assert self.mean is not None and self.std is not None  # set by __init__ for this kind
            return (x - self.mean) / self.std
        mean = x.mean((2, 3), keepdim=True)
        # TF's per_image_standardization floor: a flat channel divides by 1/sqrt(H*W), not by 0.
        floor = 1.0 / (x.shape[2] * x.shape[3]) ** 0.5
        std = x.std((2, 3), keepdim=True, unbiased=False).clamp_min(floor)
        return (x - mean) / std

    def to(self, device: torch.device) -> Normalizer:
        if self.mean is not None and self.std is not None:  # set together
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self
