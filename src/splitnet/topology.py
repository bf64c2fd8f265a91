"""Which nodes of a WRN get group-assignment vectors, and which layers connect them.

For every split segment the official code creates (named here by what they cover):

* head (``G1 > 1``):   ``head_out`` (G1 x classes, q1), ``head_in`` (G1 x fc inputs, p1)
* stage s (``G > 1``): ``stage{s}_in`` (input stream, p), ``stage{s}_hidden{u}`` (hidden channels
  of unit u, r) and the output stream ``stage{s}_out``.  Residual sharing (supp. section 3): every unit
  of the stage reads and writes the same stream, so one vector covers it, and it is *not a
  variable*: it is the next segment's input vector merged to this segment's group count
  (q2 = merge(p1), q3 = merge(p2)).

Layers are listed in the official build order, which fixes how the disjoint/balance terms are
averaged (see ``regularizers``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import WRNPlan
from .spec import SEGMENTS, SpecError, SplitSpec

HEAD = len(SEGMENTS) - 1  # segment index of the fc


@dataclass(frozen=True)
class Vector:
    """A G x D assignment matrix; ``source`` names the vector it is merged from (if any)."""

    name: str
    groups: int
    size: int
    source: str | None = None

    @property
    def is_variable(self) -> bool:
        return self.source is None


@dataclass(frozen=True)
class SplitLayer:
    """A conv/fc whose inter-group weights are regularized and cut."""

    path: str  # module path inside WideResNet
    input: str  # vector over its input channels
    output: str  # vector over its output channels
    reads_stage_input: bool  # shortcut/conv1 of a stage's first unit


@dataclass(frozen=True)
class Topology:
    spec: SplitSpec
    plan: WRNPlan
    vectors: dict[str, Vector]
    layers: tuple[SplitLayer, ...]

    def variables(self) -> list[Vector]:
        return [v for v in self.vectors.values() if v.is_variable]


def stage_in(s: int) -> str:
    return f"stage{s}_in"


def stage_out(s: int) -> str:
    return f"stage{s}_out"


def stage_hidden(s: int, u: int) -> str:
    return f"stage{s}_hidden{u}"


def segment_input_vector(segment: int) -> str:
    """Name of the vector over a segment's input (``head_in`` for the fc)."""
    return "head_in" if segment == HEAD else stage_in(segment + 1)


def build_topology(plan: WRNPlan, spec: SplitSpec) -> Topology:
    if len(plan.stages) != HEAD:
        raise SpecError(f"split specs cover {HEAD} stages; this WRN has {len(plan.stages)}")
    vectors: dict[str, Vector] = {}
    layers: list[SplitLayer] = []
    widths = [plan.stem_width] + [st.width for st in plan.stages]

    g_head = spec.groups[HEAD]
    if g_head > 1:
        vectors["head_out"] = Vector("head_out", g_head, plan.num_classes)
        vectors["head_in"] = Vector("head_in", g_head, widths[-1])

    for s in range(1, HEAD + 1):  # stage numbers 1..3 are segment indices 0..2
        seg = s - 1
        g = spec.groups[seg]
        if g == 1:
            continue
        stage = plan.stages[seg]
        if not stage.projection:
            raise SpecError(f"stage {s} has no projection shortcut, so its input and output cannot be split apart")
        vectors[stage_in(s)] = Vector(stage_in(s), g, widths[seg])
        for u, hidden in enumerate(stage.hidden):
            vectors[stage_hidden(s, u)] = Vector(stage_hidden(s, u), g, hidden)
        vectors[stage_out(s)] = Vector(stage_out(s), g, stage.width, source=segment_input_vector(seg + 1))
        for u in range(len(stage.hidden)):
            base = f"stages.{seg}.{u}"
            src = stage_in(s) if u == 0 else stage_out(s)
            if u == 0:
                layers.append(SplitLayer(f"{base}.shortcut", src, stage_out(s), True))
            layers.append(SplitLayer(f"{base}.conv1", src, stage_hidden(s, u), u == 0))
            layers.append(SplitLayer(f"{base}.conv2", stage_hidden(s, u), stage_out(s), False))

    if g_head > 1:
        layers.append(SplitLayer("fc", "head_in", "head_out", False))
    for v in vectors.values():
        if v.source is not None and v.source not in vectors:
            raise SpecError(f"{v.name} merges {v.source}, which this split does not create")
    return Topology(spec, plan, vectors, tuple(layers))
