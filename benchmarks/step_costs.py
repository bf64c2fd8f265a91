"""What one training step costs at the paper scale, and how close it gets to the device's peak.

Three steps of the paper grid, each through the real ``splitnet.engine.train`` loop (batch 90,
bf16 autocast and channels_last on CUDA), eager and ``torch.compile``d:

* ``baseline``: a dense WRN-16-8 step (``train_baseline``);
* ``deep_grouping``: a Deep 2-2-2 grouping step, regularisers on (``learn_groups``);
* ``hier_finetune``: a step of the Hier 2-4-4 split network (``finetune``; balanced groups).

Per step: ms (median over the timed steps, CUDA synchronised), the FLOPs of the step (3 x the
forward FLOPs counted by ``splitnet.counting``, x batch: 836 GFLOP for WRN-16-8 at 32x32) and the
fraction of peak they reach, against a bf16 matmul (8192^3) timed on the same device.

    python benchmarks/step_costs.py --out FILE [--device cuda] [--tiny] [--no-compile] [--steps 20]

``--tiny``: WRN-10-1 at 8x8, batch 8 (the CPU test of the GPU check).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info
from parallel_bench import build_models
from train_throughput import build

from splitnet.augment import Normalizer
from splitnet.config import load_registry, resolve
from splitnet.counting import count_model
from splitnet.engine import DeviceData, EngineConfig, Schedule, apply_backend_flags, backend_flags, train
from splitnet.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 100
KINDS = ("baseline", "deep_grouping", "hier_finetune")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, size: int, repeats: int = 20) -> float:
    """bf16 (CUDA) or fp32 (CPU) dense matmul throughput: the peak a step is measured against."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def model_for(kind: str, arch: str, row: dict):
    """(model, regularizer) as the stage that runs this kind of step builds them."""
    if kind == "baseline":
        return build("baseline", arch, 3, row)
    if kind == "deep_grouping":
        return build("grouping", arch, 3, row)
    return build_models(arch, NUM_CLASSES, ["hier"])[1]["hier"], None


def step_ms(kind: str, args, data: DeviceData, cfg: EngineConfig, row: dict) -> dict:
    device = data.images.device
    torch.manual_seed(0)
    model, regularizer = model_for(kind, args.arch, row)
    flops = 3 * count_model(model, (3, args.image_size, args.image_size)).flops * args.batch
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    stamps: list[float] = []

    def after_step(step: int) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    schedule = Schedule(epochs=1, lr=0.1, milestones=(), lr_decay=0.1, momentum=0.9, weight_decay=5e-4)
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        train(
            model,
            data,
            schedule,
            cfg,
            Path(run_dir),
            normalizer=Normalizer("per_image").to(device),
            regularizer=regularizer,
            after_step=after_step,
        )
    intervals = [b - a for a, b in pairwise(stamps[args.warmup - 1 :])]
    ms = 1000 * statistics.median(intervals)
    return {"ms_per_step": ms, "step_gflop": flops / 1e9, "achieved_tflops": flops / (ms / 1000) / 1e12}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="WRN-10-1 at 8x8, batch 8 (CPU tests)")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    args.arch, args.image_size, args.batch = ("wrn-10-1", 8, 8) if args.tiny else ("wrn-16-8", 32, 90)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    row = resolve(load_registry(ROOT / "params"), "deep", "paper")
    steps = args.warmup + args.steps
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.batch * steps, 3, args.image_size, args.image_size), generator=gen, dtype=torch.uint8
    )
    data = DeviceData(images.to(device), torch.randint(0, NUM_CLASSES, (len(images),), generator=gen).to(device))
    peak = matmul_peak_tflops(device, 512 if args.tiny else 8192)
    print(f"matmul peak {peak:.1f} TFLOP/s ({'bf16' if cuda else 'fp32'})", flush=True)
    results = []
    for compiled in (False, True) if not args.no_compile else (False,):
        cfg = EngineConfig(
            device=str(device),
            batch_size=args.batch,
            eval_batch_size=500,
            channels_last=True,
            bf16=cuda,
            compile=compiled,
            normalization="per_image",
            augment_pad=4,
            augment_flip=True,
            seed=0,
            checkpoint_every=10**6,
            log_every=10**6,
            threads=0,
        )
        apply_backend_flags(backend_flags(cfg, device))
        for kind in KINDS:
            entry = {"kind": kind, "compiled": compiled, **step_ms(kind, args, data, cfg, row)}
            entry["fraction_of_peak"] = entry["achieved_tflops"] / peak
            results.append(entry)
            print(
                f"{kind:14s} {'compiled' if compiled else 'eager':8s} {entry['ms_per_step']:8.2f} ms/step "
                f"{entry['fraction_of_peak']:6.1%} of peak",
                flush=True,
            )
    fastest = {k: min(r["ms_per_step"] for r in results if r["kind"] == k) for k in KINDS}
    atomic_write_json(
        args.out,
        {
            "benchmark": "step_costs",
            "arch": args.arch,
            "image_size": args.image_size,
            "batch": args.batch,
            "bf16": cuda,
            "matmul_peak_tflops": peak,
            "results": results,
            # what benchmarks/paper_grid_cost.py prices the grid with (the faster of eager / compiled)
            "ms_per_step": {
                "plain": fastest["baseline"],
                "grouping": fastest["deep_grouping"],
                "finetune": fastest["hier_finetune"],
            },
            "machine": machine_info(),
        },
    )
    print(f"recorded {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
