"""How many operations one training step launches: a plain step vs Shallow / Deep / Hier grouping steps.

A grouping step adds the SplitNet regularisers (``split_terms`` over every split layer and
assignment matrix) to a plain step of the same network (the grouping network, dropout included). On a GPU each eager operation costs ~5-10 us of host time
whatever its size, so at the paper scale a step that launches many small operations is bound by
the host, not by the GPU. This counts, with ``torch.profiler``, the operations of one step (forward,
loss, backward, optimizer) that do work: every ATen operation that calls no other ATen operation,
views and other metadata-only operations left out, plus every fused kernel a compiled graph runs
(inductor's ``cpp.enable_kernel_profile`` gives each its own profiler event); a multi-tensor
``_foreach_*`` operation (the optimizer's, as torch runs SGD on a GPU) counts once, as on a GPU. Each grouping step
is counted with the regularisers eager and compiled (what the grouping stage does when
``engine.compile`` is set; the network itself stays eager here, so the ratio is the regularisers'
own cost). The count does not depend on the image size, so WRN-16-8 is profiled at 8x8 on the CPU.

    python benchmarks/step_ops.py [--arch wrn-16-8] [--out benchmarks/results/step_ops-cpu.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from splitnet.assignment import GroupAssignments
from splitnet.config import load_registry, resolve
from splitnet.grouping_stage import GroupingModel, dropout_kwargs
from splitnet.io import atomic_write_json
from splitnet.model import WideResNet, parse_arch, wrn_plan
from splitnet.regularizers import RegularizerConfig, combine, split_terms
from splitnet.spec import SplitSpec
from splitnet.topology import build_topology

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"shallow": "shallow", "deep": "deep", "hier": "hier"}  # step kind -> the row whose split it runs
# metadata-only operations: they launch nothing
VIEWS = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::expand", "aten::as_strided", "aten::t",
    "aten::transpose", "aten::permute", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze",
    "aten::alias", "aten::detach", "aten::detach_", "aten::lift_fresh", "aten::unbind", "aten::split",
    "aten::chunk", "aten::narrow", "aten::numpy_T", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::resize_", "aten::_unsafe_view", "aten::result_type", "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::contiguous", "aten::size", "aten::stride", "aten::to", "aten::_to_copy",
    "aten::resolve_conj", "aten::resolve_neg",
}  # fmt: skip


def count_ops(prof: torch.profiler.profile) -> int:
    """Leaf ATen operations that do work (a compiled graph's extern kernels, e.g. its matmuls,
    included), plus the fused kernels of compiled graphs (``cpp_fused_*`` / ``triton_*`` events)."""
    events = prof.events()
    parents = {e.cpu_parent.id for e in events if e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")}

    def in_foreach(e) -> bool:  # a multi-tensor op is one kernel on a GPU; on the CPU it loops
        while e.cpu_parent is not None:
            e = e.cpu_parent
            if e.name.startswith("aten::_foreach_"):
                return True
        return False

    ops = 0
    for e in events:
        if e.name.startswith("aten::_foreach_"):
            ops += 1
        elif e.name.startswith("aten::"):
            ops += e.id not in parents and e.name not in VIEWS and not in_foreach(e)
        elif "cpp_fused_" in e.name or e.name.startswith("triton_"):
            ops += 1
    return ops


def step_model(kind: str, arch: str, registry: dict, compiled: bool):
    """(model, regularizer) of one grouping row's step, as the grouping stage builds them
    (regularizer None: the plain step of the same network)."""
    plan = wrn_plan(*parse_arch(arch), 3, 100)
    row = resolve(registry, ROWS[kind], "paper")
    spec = SplitSpec.parse(row["group"]["split"])
    net = WideResNet(plan, bn_no_scale=row["model"]["bn_no_scale"], **dropout_kwargs(row, spec))
    topology = build_topology(plan, spec)
    assignments = GroupAssignments(topology, row["group"]["parametrisation"])
    reg_cfg = RegularizerConfig.from_group(row["group"])

    def terms():
        return split_terms(net, topology, assignments.matrices(), reg_cfg.weighted)

    regularizer_terms = torch.compile(terms) if compiled else terms
    return GroupingModel(net, assignments), lambda: combine(regularizer_terms(), reg_cfg).total


def ops_per_step(kind: str, args, registry: dict, mode: str) -> int:
    """Ops of one step of ``kind``'s network: ``plain`` (no regularisers), ``eager`` or ``compiled``."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model, regularizer = step_model(kind, args.arch, registry, mode == "compiled")
    # foreach: what torch picks on a GPU (a handful of multi-tensor ops, not a few per parameter)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=True)
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 100, (2,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if mode != "plain":
            loss = loss + regularizer()
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up (and compilation)
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return count_ops(prof)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="wrn-16-8")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_ops-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # a profiler event per fused CPU kernel (compiled afresh: cached graphs keep their old setting)
    inductor_config.cpp.enable_kernel_profile = True
    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False
    registry = load_registry(ROOT / "params")
    results = []
    for kind in ROWS:
        plain = ops_per_step(kind, args, registry, "plain")
        results.append({"kind": f"{kind}_plain", "ops": plain, "ops_ratio_vs_plain": 1.0})
        for mode in ("eager", "compiled"):
            ops = ops_per_step(kind, args, registry, mode)
            entry = {"kind": f"{kind}_grouping_{mode}", "ops": ops, "ops_ratio_vs_plain": round(ops / plain, 3)}
            results.append(entry)
    for r in results:
        print(f"{r['kind']:26s} {r['ops']:6d} ops  {r['ops_ratio_vs_plain']:.2f}x plain", flush=True)
    atomic_write_json(
        args.out,
        {
            "benchmark": "step_ops",
            "arch": args.arch,
            "plain": "the same grouping network's step without the regularisers",
            "results": results,
            "machine": machine_info(),
        },
    )
    print(f"recorded {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
