"""Per-layer and total Params/FLOPs of a split WRN against the unsplit one (``splitnet summary``)."""

from __future__ import annotations

from .counting import count_model, reduction_pct
from .model import WideResNet
from .partition import Partition, balanced_partition
from .spec import SplitSpec
from .split import build_split_network
from .topology import build_topology


def summarize(
    dense: WideResNet,
    spec: SplitSpec,
    input_shape: tuple[int, int, int],
    partition: Partition | None = None,
    convention: str = "shared",
    layout: str = "preact",
) -> dict:
    """Counts of the split network built from ``partition`` (balanced groups when None)."""
    topology = build_topology(dense.plan, spec)
    part = balanced_partition(topology) if partition is None else partition
    base = count_model(dense, input_shape)
    split = count_model(build_split_network(topology, part, convention, layout), input_shape)
    return {
        "arch": dense.plan.name,
        "split": spec.code,
        "convention": convention,
        "layout": layout,
        "groups": "balanced" if partition is None else "given",
        "input_shape": list(input_shape),
        "num_classes": dense.plan.num_classes,
        "params": split.params,
        "flops": split.flops,
        "baseline_params": base.params,
        "baseline_flops": base.flops,
        "params_reduced_pct": reduction_pct(split.params, base.params),
        "flops_reduced_pct": reduction_pct(split.flops, base.flops),
        "stem": {"params": split.stem_params, "flops": split.stem_flops},
        "layers": split.as_dict()["layers"],
    }


def format_summary(summary: dict) -> str:
    """A plain-text table for people."""
    lines = [
        f"{summary['arch']}  split {summary['split']}  ({summary['groups']} groups, "
        f"{summary['convention']} inputs, {summary['layout']} units)  input {'x'.join(map(str, summary['input_shape']))}",
        f"{'layer':44s} {'kind':4s} {'in':>5s} {'out':>5s} {'k':>2s} {'out_hw':>7s} {'params':>12s} {'FLOPs':>15s}",
    ]
    for row in summary["layers"]:
        note = "" if row["counted"] else "  (stem, not counted)"
        hw = "x".join(map(str, row["out_hw"]))
        lines.append(
            f"{row['name']:44s} {row['kind']:4s} {row['c_in']:5d} {row['c_out']:5d} {row['kernel']:2d} "
            f"{hw:>7s} {row['params']:12,d} {row['flops']:15,d}{note}"
        )
    lines += [
        f"{'total (split)':44s} {'':30s} {summary['params']:12,d} {summary['flops']:15,d}",
        f"{'total (unsplit)':44s} {'':30s} {summary['baseline_params']:12,d} {summary['baseline_flops']:15,d}",
        f"reduced: params {summary['params_reduced_pct']:.2f}%   FLOPs {summary['flops_reduced_pct']:.2f}%",
    ]
    return "\n".join(lines)
