"""Finetune step time of split networks: sequential vs model-parallel (supplement §6).

One training step = forward, cross-entropy, backward, SGD update (momentum 0.9), in train mode
(batch-statistics BN), as ``engine.train`` runs it minus the data augmentation.  Modes:

* ``split_sequential``: the split network in one process (CPU: one core, one thread);
* ``split_sequential_all_cores`` (CPU): the same on every core, one intra-op thread per core;
* ``dense_all_cores`` (CPU) / ``dense`` (GPU): the unsplit WRN;
* ``split_parallel``: ``ParallelSplit`` on ``--workers`` processes (CPU: one per core, pinned),
  logits gathered with autograd, gradients of replicated layers summed.

``step_speedup_over_workers`` = (split_sequential / split_parallel) / workers.  Results with
machine info go to benchmarks/results/parallel_finetune-<device>.json.

    python benchmarks/parallel_finetune.py [--device cpu|cuda] [--arch wrn-16-8] [--batch 64]
        [--workers N] [--rounds 3] [--bf16] [--channels-last]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info
from parallel_bench import SPLITS, Recorder, autocast, every_core, sync_for, worker_setup

from splitnet.io import atomic_write_json
from splitnet.parallel import ParallelSplit, Worker, launch


def stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


def bench(worker: Worker, args: argparse.Namespace) -> dict | None:
    env = worker_setup(worker, args.arch, args.num_classes, args.splits, args.image_size, args.channels_last)
    device, cpu, cores, mine, fmt = env.device, env.cpu, env.cores, env.mine, env.fmt
    dense, splits, shape = env.dense, env.splits, env.shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *shape, generator=gen).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=gen).to(device)
    rec = Recorder(worker, sync_for(device), args.warmup)
    wide = (lambda: every_core(set(cores), mine)) if cpu else None
    dense_step = stepper(dense.train().to(device, memory_format=fmt), x, y, args.bf16)
    steps = {}
    for name, split in splits.items():
        split.train().to(device, memory_format=fmt)
        # A separate copy: the parallel one's gradient hooks would wait for the other workers.
        sequential = copy.deepcopy(split)
        steps[name] = (
            stepper(sequential, x, y, args.bf16),
            stepper(ParallelSplit(split, shape, worker), x, y, args.bf16),
        )
    for _ in range(args.rounds):
        if cpu:
            rec.alone("dense", "dense_all_cores", dense_step, args.repeats, setup=wide)
        else:
            rec.alone("dense", "dense", dense_step, args.repeats)
        for name, (sequential, parallel) in steps.items():
            if cpu:
                rec.alone(name, "split_sequential_all_cores", sequential, args.repeats, setup=wide)
            rec.alone(name, "split_sequential", sequential, args.repeats)
            rec.together(name, "split_parallel", parallel, args.repeats)
    if not worker.is_main:
        return None
    return {
        "median": {f"{k}|{m}": rec.median(k, m) for k, m in rec.ms},
        "rounds": {key: rec.raw(key) for key in sorted({k for k, _ in rec.ms})},
        "backend": worker.backend,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--arch", default="wrn-16-8")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--splits", nargs="+", choices=tuple(SPLITS), default=list(SPLITS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="default: one per core (CPU) or per GPU, at least 2")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
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
    med = raw["median"]
    dense_mode = "dense_all_cores" if args.device == "cpu" else "dense"
    rows = []
    for name in args.splits:
        ms = {m: round(v, 3) for k, v in med.items() for key, m in [k.split("|")] if key == name}
        ms[dense_mode] = round(med[f"dense|{dense_mode}"], 3)
        speedup = ms["split_sequential"] / ms["split_parallel"]
        rows.append(
            {
                "split": name,
                "spec": SPLITS[name],
                "batch": args.batch,
                "workers": workers,
                "ms_per_step": ms,
                "step_speedup": round(speedup, 4),
                "step_speedup_over_workers": round(speedup / workers, 4),
                "speedup_over_dense": round(ms[dense_mode] / ms["split_parallel"], 4),
                "rounds_ms": raw["rounds"][name],
            }
        )
        print(
            f"{name:8s} "
            + "  ".join(f"{m} {v:.1f} ms" for m, v in ms.items())
            + f"  -> parallel {speedup:.2f}x sequential on {workers} workers",
            flush=True,
        )
    out = Path(args.out or Path(__file__).parent / "results" / f"parallel_finetune-{args.device}.json")
    atomic_write_json(
        out,
        {
            "benchmark": "parallel_finetune",
            "arch": args.arch,
            "device": args.device,
            "workers": workers,
            "backend": raw["backend"],
            "batch": args.batch,
            "image_size": args.image_size,
            "bf16": args.bf16,
            "channels_last": args.channels_last,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "machine": machine_info(),
            "loadavg_1min": {"before": load_before[0], "after": load_after[0]},
            "results": rows,
        },
    )
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
