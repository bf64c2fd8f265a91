"""Class groups from a trained classifier's confusions, to start the class assignment from.

The literature mechanism of the grouping study (docs/studies/semantic-groups.md): HD-CNN (Yan et
al., ICCV 2015) builds its coarse categories by spectral clustering of a trained network's
confusion matrix on held-out data, and Jiang et al. (2021, "Computing class hierarchies from
classifiers") read a class hierarchy from the same matrix. Here:

* :func:`soft_confusion` — row ``i`` is the mean softmax output over the validation images of
  class ``i``. The soft version still ranks a class's neighbours when the classifier makes no
  hard errors (the planted data is learned to 0 % validation error);
* :func:`balanced_spectral_groups` — normalised spectral embedding of the symmetrised affinity
  (diagonal removed, each row rescaled to sum 1 so that only a class's *relative* confusions
  count), then k-means with equal group capacities (``ceil(C / G)``), deterministic.
"""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def soft_confusion(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int = 500
) -> torch.Tensor:
    """``C x C``: row ``i`` = mean softmax over the images of class ``i`` (eval mode)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        probs = torch.softmax(model(images[start : start + batch_size]).double(), dim=1).cpu()
        sums.index_add_(0, labels[start : start + batch_size].cpu(), probs)
    model.train(was_training)
    counts = torch.bincount(labels.cpu(), minlength=num_classes).clamp_min(1).double()
    return sums / counts[:, None]


def balanced_spectral_groups(confusion: torch.Tensor, groups: int, iterations: int = 50) -> list[int]:
    """A group per class: balanced k-means on the spectral embedding of the confusions."""
    c = confusion.shape[0]
    if not 1 <= groups <= c:
        raise ValueError(f"cannot put {c} classes into {groups} groups")
    affinity = confusion.double().clone()
    affinity.fill_diagonal_(0.0)
    affinity = affinity / affinity.sum(1, keepdim=True).clamp_min(1e-300)  # relative confusions only
    affinity = (affinity + affinity.T) / 2
    inv_sqrt = affinity.sum(1).clamp_min(1e-300).rsqrt()
    laplacian = torch.eye(c, dtype=torch.float64) - inv_sqrt[:, None] * affinity * inv_sqrt[None, :]
    _, vectors = torch.linalg.eigh(laplacian)
    embedding = vectors[:, :groups]
    embedding = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # farthest-point initial centres, starting from class 0 (deterministic)
    centres = [embedding[0]]
    while len(centres) < groups:
        distance = torch.cdist(embedding, torch.stack(centres)).min(1).values
        centres.append(embedding[int(distance.argmax())])
    centre = torch.stack(centres)
    capacity = math.ceil(c / groups)
    assignment: list[int] = []
    for _ in range(iterations):
        distance = torch.cdist(embedding, centre)
        order = sorted((float(distance[i, g]), i, g) for i in range(c) for g in range(groups))
        new, load = [-1] * c, [0] * groups
        for _, i, g in order:  # greedy: closest (class, group) pairs first, groups capped
            if new[i] < 0 and load[g] < capacity:
                new[i], load[g] = g, load[g] + 1
        if new == assignment:
            break
        assignment = new
        members = [[i for i in range(c) if assignment[i] == g] for g in range(groups)]
        centre = torch.stack([embedding[m].mean(0) if m else centre[g] for g, m in enumerate(members)])
    return assignment
