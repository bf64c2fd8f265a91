"""Inference throughput of dense WRN-16-8 vs its Shallow / Deep / Hierarchical splits.

Prints images/s per model and memory format, the measured speedup over the dense model and the
FLOP ratio (dense FLOPs / split FLOPs), and records everything with machine info in
benchmarks/results/split_inference-<device>.json.  Target: speedup >= 0.9 x FLOP ratio.

    python benchmarks/split_inference.py [--device cpu|cuda] [--bf16] [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from splitnet.counting import count_model
from splitnet.io import atomic_write_json
from splitnet.metrics import throughput
from splitnet.model import wide_resnet
from splitnet.partition import balanced_partition, random_partition
from splitnet.spec import SplitSpec
from splitnet.split import build_split_network
from splitnet.topology import build_topology

SPLITS = {"shallow": "1-2-2", "deep": "2-2-2", "hier": "2-4-4"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per round (median)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all models (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--groups", choices=("balanced", "random"), default="balanced")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only, as the engine)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = wide_resnet("wrn-16-8").eval()
    models = {"dense": dense}
    for name, code in SPLITS.items():
        top = build_topology(dense.plan, SplitSpec.parse(code))
        part = balanced_partition(top) if args.groups == "balanced" else random_partition(top, seed=0)
        models[name] = build_split_network(top, part, "shared", "preact", dense=dense).eval()
    flops = {name: count_model(m, (3, 32, 32)).flops for name, m in models.items()}

    rows = []
    for fmt in ("contiguous", "channels_last"):
        memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        for model in models.values():
            model.to(args.device, memory_format=memory_format)
        # Interleaved rounds: machine drift hits every model alike instead of the last one measured.
        rates: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                device = torch.device(args.device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda"):
                    measured = throughput(
                        model, (3, 32, 32), args.batch, args.repeats, device, fmt == "channels_last", warmup=args.warmup
                    )
                rates[name].append(measured["images_per_s"])
        base = statistics.median(rates["dense"])
        for name in models:
            rate = statistics.median(rates[name])
            spread = (max(rates[name]) - min(rates[name])) / rate
            flop_ratio = flops["dense"] / flops[name]
            speedup = rate / base
            rows.append(
                {
                    "model": name,
                    "memory_format": fmt,
                    "images_per_s": round(rate, 2),
                    "spread": round(spread, 3),
                    "rounds": [round(r, 2) for r in rates[name]],
                    "flops": flops[name],
                    "flop_ratio": round(flop_ratio, 4),
                    "speedup": round(speedup, 4),
                    "speedup_over_flop_ratio": round(speedup / flop_ratio, 4),
                }
            )
            print(
                f"{fmt:13s} {name:8s} {rate:9.1f} img/s (spread {spread:.0%})  speedup {speedup:5.2f}x  "
                f"FLOP ratio {flop_ratio:5.2f}x  speedup/FLOP ratio {speedup / flop_ratio:5.2f}",
                flush=True,
            )

    out = Path(args.out or Path(__file__).parent / "results" / f"split_inference-{args.device}.json")
    atomic_write_json(
        out,
        {
            "benchmark": "split_inference",
            "arch": "wrn-16-8",
            "batch": args.batch,
            "groups": args.groups,
            "bf16": args.bf16 and args.device.startswith("cuda"),
            "repeats": args.repeats,
            "rounds": args.rounds,
            "device": args.device,
            "machine": machine_info(),
            "results": rows,
        },
    )
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
