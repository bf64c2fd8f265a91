"""The overlap variant (supp. section 4.1): fuzzy nodes may belong to several groups.

A node is *fuzzy* when more than one group's assignment exceeds ``threshold`` (0.1 in the
paper).  While grouping, an assignment variable is frozen once fewer than ``freeze_below``
(20 %) of its nodes are fuzzy, so the remaining fuzzy nodes stay fuzzy instead of being forced
into one group.  At split time ``partition_from_assignments(..., overlap_threshold=threshold)``
duplicates each fuzzy node into every group above the threshold.

How duplicated nodes are recombined: every copy lives inside its own branch (a duplicated
hidden or stream channel is computed separately by each branch that holds it; branches never
exchange activations, so the network stays a tree), and a class produced by several leaves
gets the mean of its copies' logits (``SplitWideResNet``).  A dense network whose weights obey
``split.keep_mask`` computes exactly the same logits.
"""

from __future__ import annotations

from .assignment import GroupAssignments
from .partition import fuzzy_fraction

DEFAULT_THRESHOLD = 0.1
DEFAULT_FREEZE_BELOW = 0.2


def update_freezing(
    assignments: GroupAssignments, threshold: float = DEFAULT_THRESHOLD, freeze_below: float = DEFAULT_FREEZE_BELOW
) -> list[str]:
    """Freeze every not-yet-frozen variable whose fuzzy fraction dropped below ``freeze_below``.

    Returns the names frozen by this call.
    """
    newly = []
    for name in assignments.names:
        if assignments.is_frozen(name):
            continue
        if fuzzy_fraction(assignments.matrix(name).detach(), threshold) < freeze_below:
            assignments.freeze(name)
            newly.append(name)
    return newly
