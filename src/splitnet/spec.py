"""Split specifications: how many groups each segment of a Wide ResNet is split into.

A WRN is a sequence of *segments*: ``stage1, stage2, stage3, head`` (the head is the final
fully connected layer). The official code writes a split as ``G3-G2-G1`` = groups of
stage 2, stage 3 and the head (stage 1 is never split):

* ``1-1-4``  FC split            * ``1-G-G``  Shallow split (stage 3 + fc)
* ``2-2-2``  Deep split          * ``2-4-4``  Hierarchical (2 supergroups -> 4 subgroups)

Group counts never decrease towards the output, so the split network is a tree: group ``g`` of
a segment with ``N`` groups hangs under group ``even_merge_indices(N, M)[g]`` of the segment
before it (``M`` groups).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENTS: tuple[str, ...] = ("stage1", "stage2", "stage3", "head")
_SPEC_RE = re.compile(r"^\s*(\d+)-(\d+)-(\d+)\s*$")


class SpecError(ValueError):
    """A split specification that cannot be built."""


def even_merge_indices(n: int, m: int) -> list[int]:
    """Map ``n`` subgroups onto ``m`` supergroups in contiguous blocks (official rule).

    Supergroup ``i`` gets ``floor((n + m - i - 1) / m)`` members, so the first supergroups
    take the extra ones: (4, 2) -> [0, 0, 1, 1]; (5, 2) -> [0, 0, 0, 1, 1]; (6, 4) -> [0, 0, 1, 1, 2, 3].
    """
    if not 1 <= m <= n:
        raise SpecError(f"cannot merge {n} groups into {m}: need 1 <= {m} <= {n}")
    out: list[int] = []
    for i in range(m):
        out += [i] * ((n + m - i - 1) // m)
    return out


@dataclass(frozen=True)
class SplitSpec:
    """Group count per segment, ``groups[i]`` for ``SEGMENTS[i]``."""

    groups: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if len(self.groups) != len(SEGMENTS):
            raise SpecError(f"a split needs {len(SEGMENTS)} group counts, got {self.groups}")
        if self.groups[0] != 1:
            raise SpecError("stage 1 is never split (as in the official code)")
        if any(g < 1 for g in self.groups):
            raise SpecError(f"group counts must be >= 1, got {self.code}")
        for a, b in zip(self.groups, self.groups[1:]):
            if b < a:
                raise SpecError(
                    f"split {self.code}: group counts must not decrease towards the output "
                    f"(stage2 <= stage3 <= head), so that the split network is a tree"
                )

    @classmethod
    def parse(cls, text: str) -> SplitSpec:
        """Parse the official ``G3-G2-G1`` notation, e.g. ``"2-4-4"``."""
        match = _SPEC_RE.match(str(text))
        if not match:
            raise SpecError(
                f"split spec {text!r} is not of the form G3-G2-G1 "
                "(groups of stage2-stage3-fc, e.g. 1-1-4, 1-2-2, 2-2-2, 2-4-4)"
            )
        g3, g2, g1 = (int(v) for v in match.groups())
        return cls((1, g3, g2, g1))

    @property
    def code(self) -> str:
        """The official ``G3-G2-G1`` string."""
        return "-".join(str(g) for g in self.groups[1:])

    @property
    def first_split(self) -> int | None:
        """Index (into SEGMENTS) of the lowest segment with more than one group."""
        return next((i for i, g in enumerate(self.groups) if g > 1), None)

    def __str__(self) -> str:
        return self.code
