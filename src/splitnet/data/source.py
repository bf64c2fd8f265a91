"""In-memory form of a labelled image source, before it is split and written out."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSet:
    """Images with their fine class labels.

    ``images`` is uint8 ``N x C x H x W``; ``labels`` is int64 ``N``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The images at positions ``index`` (int64), in that order."""
        return ImageSet(self.images[index], self.labels[index])


@dataclass(frozen=True)
class SourceData:
    """A data source's official train and test sets plus its class hierarchy.

    ``superclass[c]`` is the superclass (coarse label) of fine class ``c``, so the coarse
    label of every image is ``superclass[labels]``. ``inputs`` maps each input file that was
    read to its MD5, for the manifest.
    """

    train: ImageSet
    test: ImageSet
    class_names: list[str]
    superclass: torch.Tensor
    superclass_names: list[str]
    inputs: dict[str, str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def coarse_labels(self, images: ImageSet) -> torch.Tensor:
        """Superclass label of every image in ``images``."""
        return self.superclass[images.labels]
