"""Seeded selection of images: the train/val hold-out and per-class subsets.

Each selection draws from its own generator, seeded from the run seed and a purpose string,
so changing one setting (say ``train_per_class``) never changes what another selects.
"""

from __future__ import annotations

import hashlib

import torch

from splitnet.data.errors import DataError


def generator(seed: int, purpose: str) -> torch.Generator:
    """A torch generator determined by ``seed`` and ``purpose`` alone."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def hold_out(count: int, holdout: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(count)`` at random into ``(kept, held_out)``, each sorted.

    Not stratified, like the official code's shuffle of the 50k CIFAR-100 train images.
    """
    if not 0 <= holdout < count:
        raise DataError(f"data.val_size={holdout} must be >= 0 and smaller than the {count} train images")
    perm = torch.randperm(count, generator=gen)
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def per_class(labels: torch.Tensor, num_classes: int, limit: int, gen: torch.Generator, what: str) -> torch.Tensor:
    """Sorted positions of ``limit`` randomly chosen images of every class.

    ``what`` names the setting in the error raised when a class has fewer images.
    """
    order = torch.randperm(labels.numel(), generator=gen)
    shuffled = labels[order]
    chosen = []
    for cls in range(num_classes):
        members = order[shuffled == cls]
        if members.numel() < limit:
            raise DataError(f"{what}={limit}, but class {cls} has only {members.numel()} images in that split")
        chosen.append(members[:limit])
    return torch.cat(chosen).sort().values
