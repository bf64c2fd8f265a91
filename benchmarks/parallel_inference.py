"""Branch-parallel inference: dense WRN vs its sequential splits vs the splits branch-parallel.

CPU (default): one worker process per core, pinned to it with one intra-op thread
(``splitnet.parallel.launch``, gloo).  Worker 0 also measures, alone, the dense network and the
sequential split on every core (one intra-op thread per core) and on its one core.  Per split
and batch size (``--batch`` for throughput, ``--latency-batch`` for latency) it records ms per
batch and images/s of every mode, and

* ``branch_speedup_over_workers``: the branch part (everything after the trunk) run
  sequentially on one core, divided by the same branch part run branch-parallel (logit gather
  included), divided by the number of workers.  Goal >= 0.8;
* ``machine_parallel_capacity``: W x (branch part alone on one core) / (the same on every
  worker at once, no communication): the speedup the machine itself allows (W if ideal;
  less with SMT siblings, shared caches or memory bandwidth);
* ``speedup_over_dense``: end to end, branch-parallel (input broadcast from worker 0
  included; the trunk data-parallel, each worker on its share of the batch, as
  ``ParallelSplit`` runs it at inference) vs the dense network on every core, next to
  ``flop_ratio`` (dense FLOPs / split FLOPs, ``counting.count_model``);
  ``split_parallel_replicated_trunk``: the same with every worker running the whole trunk.

GPU (``--device cuda``, with ``--bf16 --channels-last`` as the paper scale runs): dense,
sequential split, one CUDA stream per branch (``StreamSplit``), all in worker 0, and
branch-parallel processes: one per GPU (NCCL), or workers sharing one GPU (gloo through the
host) when there are fewer GPUs than ``--workers``.

Rounds are interleaved over all models and modes; medians are reported.  Results, machine info
and the 1-minute load average go to benchmarks/results/parallel_inference-<device>.json.

    python benchmarks/parallel_inference.py [--device cpu|cuda] [--arch wrn-16-8] [--batch 64]
        [--latency-batch 1] [--workers N] [--rounds 3] [--bf16] [--channels-last]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info
from parallel_bench import SPLITS, Recorder, autocast, every_core, sync_for, worker_setup

from splitnet.counting import count_model
from splitnet.io import atomic_write_json
from splitnet.parallel import ParallelSplit, StreamSplit, Worker, class_order, launch


def sequential_branches(split, h: torch.Tensor) -> torch.Tensor:
    """The branch part of ``SplitWideResNet.forward``: every branch on the trunk output, in turn."""
    return class_order(split, torch.cat([out for root in split.roots for out in root(h)], dim=1))


def bench(worker: Worker, args: argparse.Namespace) -> dict | None:
    env = worker_setup(worker, args.arch, args.num_classes, args.splits, args.image_size, args.channels_last)
    device, cpu, cores, mine, fmt = env.device, env.cpu, env.cores, env.mine, env.fmt
    dense, splits, shape = env.dense, env.splits, env.shape
    flops = {"dense": count_model(dense, shape).flops}
    for name, split in splits.items():
        flops[name] = count_model(split, shape).flops
        flops[f"{name}/trunk"] = count_model(split.trunk, shape).flops
    dense.eval().to(device, memory_format=fmt)
    nets, streams = {}, {}
    for name, split in splits.items():
        split.eval().to(device, memory_format=fmt)
        nets[name] = ParallelSplit(split, shape, worker).eval()
        if not cpu and worker.is_main:
            streams[name] = StreamSplit(split)
    rec = Recorder(worker, sync_for(device), args.warmup)
    wide = (lambda: every_core(set(cores), mine)) if cpu else None
    with torch.inference_mode(), autocast(device, args.bf16):
        for _ in range(args.rounds):
            for batch in (args.batch, args.latency_batch):
                repeats = args.repeats if batch == args.batch else args.latency_repeats
                x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
                x = x.to(device).contiguous(memory_format=fmt)
                if cpu:
                    rec.alone(f"dense/{batch}", "dense_all_cores", lambda: dense(x), repeats, setup=wide)
                else:
                    rec.alone(f"dense/{batch}", "dense", lambda: dense(x), repeats)
                for name, split in splits.items():
                    key, net = f"{name}/{batch}", nets[name]
                    h = split.trunk(x)
                    if cpu:
                        rec.alone(key, "split_sequential_all_cores", lambda: split(x), repeats, setup=wide)
                    rec.alone(key, "split_sequential", lambda: split(x), repeats)
                    rec.alone(key, "branches_sequential", lambda: sequential_branches(split, h), repeats)
                    if not cpu:
                        rec.alone(key, "split_streams", lambda: streams[name](x), repeats)
                    rec.together(key, "split_parallel", lambda: net(broadcast(x, worker, fmt)), repeats)
                    rec.together(
                        key,
                        "split_parallel_replicated_trunk",
                        lambda: net.branches(split.trunk(broadcast(x, worker, fmt))),
                        repeats,
                    )
                    rec.together(key, "branches_parallel", lambda: net.branches(h), repeats)
                    # The machine's own limit: every worker runs all branches at once, no
                    # communication (shared caches, memory bandwidth, SMT siblings, a host's other guests).
                    rec.together(
                        key, "branches_sequential_on_every_worker", lambda: sequential_branches(split, h), repeats
                    )
    if not worker.is_main:
        return None
    return {
        "flops": flops,
        "rounds": {key: rec.raw(key) for key in sorted({k for k, _ in rec.ms})},
        "median": {f"{k}|{m}": rec.median(k, m) for k, m in rec.ms},
        "placement": {n: [[r.start, r.stop] for r in nets[n].placement.ranges] for n in splits},
        "backend": worker.backend,
    }


def broadcast(x: torch.Tensor, worker: Worker, fmt: torch.memory_format) -> torch.Tensor:
    """The input as worker 0 holds it, on every worker: what serving one request costs."""
    buffer = x.to(worker.comm_device).contiguous()
    dist.broadcast(buffer, src=0, group=worker.group)
    return buffer.to(x.device).contiguous(memory_format=fmt)


def summarize(raw: dict, args: argparse.Namespace, workers: int, device: str) -> list[dict]:
    med, flops = raw["median"], raw["flops"]
    dense_mode = "dense_all_cores" if device == "cpu" else "dense"
    sequential = "split_sequential_all_cores" if device == "cpu" else "split_sequential"  # same hardware as dense
    rows = []
    for name in args.splits:
        for batch in (args.batch, args.latency_batch):
            ms = {
                mode: round(med[f"{name}/{batch}|{mode}"], 3)
                for mode in (
                    "split_sequential_all_cores",
                    "split_sequential",
                    "branches_sequential",
                    "split_streams",
                    "split_parallel",
                    "split_parallel_replicated_trunk",
                    "branches_parallel",
                    "branches_sequential_on_every_worker",
                )
                if f"{name}/{batch}|{mode}" in med
            }
            ms[dense_mode] = round(med[f"dense/{batch}|{dense_mode}"], 3)
            flop_ratio = flops["dense"] / flops[name]
            branch_speedup = ms["branches_sequential"] / ms["branches_parallel"]
            capacity = workers * ms["branches_sequential"] / ms["branches_sequential_on_every_worker"]
            speedup = ms[dense_mode] / ms["split_parallel"]
            row = {
                "split": name,
                "spec": SPLITS[name],
                "batch": batch,
                "workers": workers,
                "placement": raw["placement"][name],
                "ms_per_batch": ms,
                "images_per_s": {m: round(1000 * batch / v, 2) for m, v in ms.items()},
                "flop_ratio": round(flop_ratio, 4),
                "branch_flop_share": round(1 - flops[f"{name}/trunk"] / flops[name], 4),
                "branch_speedup": round(branch_speedup, 4),
                "branch_speedup_over_workers": round(branch_speedup / workers, 4),
                # what the machine allows: W x (one worker alone) / (all workers at once), W if ideal
                "machine_parallel_capacity": round(capacity, 4),
                "branch_speedup_over_capacity": round(branch_speedup / capacity, 4),
                "speedup_over_dense": round(speedup, 4),
                "speedup_over_dense_over_flop_ratio": round(speedup / flop_ratio, 4),
                "sequential_speedup_over_dense": round(ms[dense_mode] / ms[sequential], 4),
                "speedup_over_sequential": round(ms[sequential] / ms["split_parallel"], 4),
                "rounds_ms": raw["rounds"][f"{name}/{batch}"],
            }
            if "split_streams" in ms:
                row["streams_speedup_over_sequential"] = round(ms["split_sequential"] / ms["split_streams"], 4)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--arch", default="wrn-16-8")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--splits", nargs="+", choices=tuple(SPLITS), default=list(SPLITS))
    parser.add_argument("--batch", type=int, default=64, help="throughput batch")
    parser.add_argument("--latency-batch", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="default: one per core (CPU) or per GPU, at least 2")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per round at --batch")
    parser.add_argument("--latency-repeats", type=int, default=10, help="timed calls per round at --latency-batch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a stuck run is given up")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    workers = args.workers or max(
        2, len(os.sched_getaffinity(0)) if args.device == "cpu" else torch.cuda.device_count()
    )
    load_before = os.getloadavg()
    raw = launch(
        bench, workers, (args,), timeout_s=args.timeout, collective_timeout_s=args.timeout, device=args.device
    )[0]
    load_after = os.getloadavg()
    rows = summarize(raw, args, workers, args.device)
    for r in rows:
        ms = r["ms_per_batch"]
        print(f"{r['split']:8s} batch {r['batch']:4d}: " + "  ".join(f"{m} {v:.1f} ms" for m, v in ms.items()))
        print(
            f"{'':8s} branch speedup {r['branch_speedup']:.2f}x on {workers} workers "
            f"(/workers {r['branch_speedup_over_workers']:.2f}, goal >= 0.8; the machine allows "
            f"{r['machine_parallel_capacity']:.2f}x); end to end {r['speedup_over_dense']:.2f}x "
            f"over dense (FLOP ratio {r['flop_ratio']:.2f}x)",
            flush=True,
        )
    out = Path(args.out or Path(__file__).parent / "results" / f"parallel_inference-{args.device}.json")
    atomic_write_json(
        out,
        {
            "benchmark": "parallel_inference",
            "arch": args.arch,
            "device": args.device,
            "workers": workers,
            "backend": raw["backend"],
            "batch": args.batch,
            "latency_batch": args.latency_batch,
            "image_size": args.image_size,
            "bf16": args.bf16,
            "channels_last": args.channels_last,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "latency_repeats": args.latency_repeats,
            "pinning": "one worker process per core, one thread each; dense and *_all_cores: worker 0 on every core, "
            "one thread per core"
            if args.device == "cpu"
            else None,
            "machine": machine_info(),
            "loadavg_1min": {"before": load_before[0], "after": load_after[0]},
            "results": rows,
        },
    )
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
