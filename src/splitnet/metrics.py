"""Evaluation measures beyond test error: agreement of learned class groups with known
superclasses (purity, adjusted Rand index) and measured inference throughput."""

from __future__ import annotations

import statistics
import time
from math import comb
from typing import Any

import torch
from torch import nn


def adjusted_rand_index(a: list[int], b: list[int]) -> float:
    """ARI of two labellings of the same items (1 = identical partitions, ~0 = chance)."""
    if len(a) != len(b):
        raise ValueError("labellings differ in length")
    n = len(a)
    pairs: dict[tuple[int, int], int] = {}
    for x, y in zip(a, b):
        pairs[(x, y)] = pairs.get((x, y), 0) + 1
    rows: dict[int, int] = {}
    cols: dict[int, int] = {}
    for (x, y), c in pairs.items():
        rows[x] = rows.get(x, 0) + c
        cols[y] = cols.get(y, 0) + c
    index = sum(comb(c, 2) for c in pairs.values())
    sum_rows = sum(comb(c, 2) for c in rows.values())
    sum_cols = sum(comb(c, 2) for c in cols.values())
    total = comb(n, 2)
    expected = sum_rows * sum_cols / total if total else 0.0
    maximum = (sum_rows + sum_cols) / 2
    if maximum == expected:  # both labellings trivial (one cluster or all singletons)
        return 1.0 if sum_rows == sum_cols else 0.0
    return (index - expected) / (maximum - expected)


def merges(superclasses: int, blocks: int) -> list[list[int]]:
    """Every way to merge ``superclasses`` labels into ``blocks`` non-empty blocks, as label maps.

    Restricted growth strings: ``m[0] = 0`` and each ``m[i] <= max(m[:i]) + 1``, so each set
    partition appears once.
    """
    out: list[list[int]] = []

    def grow(prefix: list[int]) -> None:
        if len(prefix) == superclasses:
            if max(prefix) + 1 == blocks:
                out.append(prefix)
            return
        for label in range(min(max(prefix) + 2, blocks)):
            grow([*prefix, label])

    if 1 <= blocks <= superclasses:
        grow([0])
    return out


def best_merge_ari(groups: list[int], superclass: list[int], blocks: int) -> float:
    """The highest ARI of ``groups`` against the superclasses merged into ``blocks`` groups
    (with fewer groups than superclasses, the grouping can at best match such a merge)."""
    count = max(superclass) + 1
    return max(adjusted_rand_index(groups, [m[s] for s in superclass]) for m in merges(count, blocks))


def semantic_ari(groups: dict) -> float | None:
    """The score of a class-group table (``class_group_table``): the ARI against the best merge of
    the superclasses when there are fewer groups than superclasses, else against the superclasses."""
    return groups.get("best_merge_ari", groups.get("superclass_ari"))


def purity(groups: list[int], superclass: list[int]) -> float:
    """Fraction of classes whose superclass is the majority superclass of their group."""
    by_group: dict[int, list[int]] = {}
    for g, s in zip(groups, superclass):
        by_group.setdefault(g, []).append(s)
    majority = sum(max(members.count(s) for s in set(members)) for members in by_group.values())
    return majority / len(groups)


def class_group_table(
    membership: torch.Tensor, class_names: list[str], superclass: list[int] | None, superclass_names: list[str] | None
) -> dict:
    """The learned class -> group assignment, with superclass agreement when a map exists.

    ``membership`` is the G x classes boolean partition of the fc outputs; a duplicated class
    (overlap) counts in the ARI/purity under its lowest group.  With fewer groups than
    superclasses, ``best_merge_ari`` is the ARI against the best merge of the superclasses.
    """
    groups = [int(col.nonzero()[0]) for col in membership.T]
    table: dict[str, Any] = {
        "groups": [[class_names[c] for c in row.nonzero().flatten().tolist()] for row in membership],
        "class_to_group": {
            name: [int(g) for g in membership[:, c].nonzero().flatten()] for c, name in enumerate(class_names)
        },
    }
    if superclass is not None:
        table["superclass_purity"] = purity(groups, superclass)
        table["superclass_ari"] = adjusted_rand_index(groups, superclass)
        if membership.shape[0] < len(set(superclass)):  # fewer groups than superclasses: score the best merge
            table["best_merge_ari"] = best_merge_ari(groups, superclass, membership.shape[0])
        if superclass_names is not None:
            table["superclasses"] = {
                name: [class_names[c] for c, s in enumerate(superclass) if s == i]
                for i, name in enumerate(superclass_names)
            }
    return table


@torch.inference_mode()
def throughput(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch: int,
    repeats: int,
    device: torch.device,
    channels_last: bool,
    warmup: int = 2,
) -> dict:
    """Median eval-mode images/s on random input of the given shape (spread = (max-min)/median)."""
    was_training = model.training
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, *input_shape, device=device).contiguous(memory_format=fmt)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        model(x)
    sync()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        sync()
        rates.append(batch / (time.perf_counter() - start))
    model.train(was_training)
    median = statistics.median(rates)
    return {
        "images_per_s": median,
        "spread": (max(rates) - min(rates)) / median,
        "batch": batch,
        "repeats": repeats,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
