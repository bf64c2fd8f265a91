"""Training throughput of the engine: plain steps vs grouping steps (SplitNet regularizers every step),
evaluation, and the on-device data pipeline alone.

Every training measurement runs the real ``splitnet.engine.train`` loop for one epoch of
``--warmup + --steps`` steps over random CIFAR-shaped uint8 images held on the device; the time
is taken between ``after_step`` callbacks (CUDA synchronised), so the warm-up steps and the
end-of-epoch checkpoint are excluded.  Models:

* ``baseline``: the dense WRN as ``stage_train`` builds it;
* ``plain``:    the Deep 2-2-2 grouping network (``grouping_stage.GroupingModel``, dropout as the ``deep``
  row) trained *without* the regularizers;
* ``grouping``: the same with the regularizers of ``stage_learn_groups`` (``split_losses`` with the
  ``deep`` row's gammas, computed every step).

Targets: regularizer overhead (grouping / plain step time) <= 1.05; data pipeline >= 10x the
training images/s.  The end-to-end overhead is the median over ``--rounds`` interleaved rounds of
plain / grouping images/s; on a busy CPU its noise (several %) can exceed the effect, so the
ratio of the fastest steps and the regularizer's value + backward timed alone (reported as
``1 + its ms / plain step ms``) are recorded too.  Results (with machine info) go to
``benchmarks/results/train_throughput-<device>-<arch>.json``.

    python benchmarks/train_throughput.py [--arch wrn-16-8] [--device cpu|cuda] [--batch 128]
        [--image-size 32] [--bf16] [--channels-last] [--steps 20] [--warmup 3] [--rounds 1] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from splitnet.assignment import GroupAssignments
from splitnet.augment import Normalizer, random_crop_flip
from splitnet.config import load_registry, resolve
from splitnet.engine import DeviceData, EngineConfig, Schedule, evaluate, train
from splitnet.grouping_stage import GroupingModel, dropout_kwargs
from splitnet.io import atomic_write_json
from splitnet.model import WideResNet, parse_arch, wrn_plan
from splitnet.regularizers import RegularizerConfig, split_losses
from splitnet.spec import SplitSpec
from splitnet.topology import build_topology

ROW = "deep"  # Deep 2-2-2 split, dropout 0.5 (params/experiments.yaml)
NUM_CLASSES = 100


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(kind: str, arch: str, in_channels: int, row: dict):
    """(model, regularizer) exactly as the stages build them (regularizer None for plain runs)."""
    plan = wrn_plan(*parse_arch(arch), in_channels, NUM_CLASSES)
    if kind == "baseline":
        return WideResNet(plan, bn_no_scale=False), None
    g = row["group"]
    spec = SplitSpec.parse(g["split"])
    net = WideResNet(plan, bn_no_scale=row["model"]["bn_no_scale"], **dropout_kwargs(row, spec))
    topology = build_topology(plan, spec)
    assignments = GroupAssignments(topology, g["parametrisation"])
    model = GroupingModel(net, assignments)
    if kind == "plain":
        return model, None
    reg_cfg = RegularizerConfig.from_group(g)

    def regularizer(step: int = 0):  # the closure of stage_learn_groups
        losses = split_losses(net, topology, assignments.matrices(), reg_cfg)
        return losses.total, {
            "reg_disjoint": losses.disjoint,
            "reg_weight": losses.weight,
            "reg_balance": losses.balance,
        }

    return model, regularizer


def train_rate(kind: str, args, data: DeviceData, cfg: EngineConfig, row: dict, profile: bool = False) -> dict:
    """Images/s of engine.train steps after the warm-up (median over timed intervals too)."""
    device = data.images.device
    torch.manual_seed(0)
    model, regularizer = build(kind, args.arch, data.images.shape[1], row)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    stamps: list[float] = []

    def after_step(step: int) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    schedule = Schedule(**{**row["group"]["schedule"], "epochs": 1, "milestones": ()})
    normalizer = Normalizer(cfg.normalization).to(device)
    prof = None
    if profile:  # record exactly the timed steps (started after the warm-up, stopped before the checkpoint)
        prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
            + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        )
        inner = after_step

        def after_step(step: int) -> None:
            inner(step)
            if len(stamps) == args.warmup:
                prof.start()
            elif len(stamps) == args.warmup + args.steps:
                sync(device)
                prof.stop()

    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        train(
            model,
            data,
            schedule,
            cfg,
            Path(run_dir),
            normalizer=normalizer,
            regularizer=regularizer,
            after_step=after_step,
        )
    if prof is not None:
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n--- profile of {args.steps} {kind} steps (top ops by self time) ---")
        print(prof.key_averages().table(sort_by=sort, row_limit=25))
    timed = stamps[args.warmup - 1 :]  # intervals after the warm-up steps
    intervals = [b - a for a, b in pairwise(timed)]
    total = timed[-1] - timed[0]
    return {
        "images_per_s": args.batch * len(intervals) / total,
        "step_ms_median": 1000 * statistics.median(intervals),
        "step_ms_min": 1000 * min(intervals),
        "step_ms_mean": 1000 * total / len(intervals),
        "timed_steps": len(intervals),
    }


def regularizer_cost(args, device: torch.device, channels_last: bool, row: dict, repeats: int = 20) -> dict:
    """The grouping regularizer alone (value + backward), median ms: a low-noise estimate of its cost."""
    torch.manual_seed(0)
    model, regularizer = build("grouping", args.arch, 3, row)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    times = []
    for i in range(repeats + 3):
        sync(device)
        start = time.perf_counter()
        total, _ = regularizer(0)
        total.backward()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {"ms_median": 1000 * statistics.median(times), "repeats": repeats}


def eval_rate(args, data: DeviceData, cfg: EngineConfig, row: dict, repeats: int = 3) -> dict:
    device = data.images.device
    torch.manual_seed(0)
    model, _ = build("baseline", args.arch, data.images.shape[1], row)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    normalizer = Normalizer(cfg.normalization).to(device)
    evaluate(model, data, normalizer, cfg)  # warm-up
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        evaluate(model, data, normalizer, cfg)  # ends with .item(): synchronised
        rates.append(len(data) / (time.perf_counter() - start))
    return {"images_per_s": statistics.median(rates), "eval_batch": cfg.eval_batch_size, "images": len(data)}


def pipeline_rate(args, data: DeviceData, cfg: EngineConfig, batches: int = 50) -> dict:
    """random_crop_flip + normalisation (+ memory format) alone, as the engine does per step."""
    device = data.images.device
    gen = torch.Generator(device=device).manual_seed(0)
    normalizer = Normalizer(cfg.normalization).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    n = len(data) // args.batch

    def batch(i: int) -> torch.Tensor:
        perm_slice = torch.arange(i % n * args.batch, (i % n + 1) * args.batch, device=device)
        x = random_crop_flip(data.images[perm_slice], cfg.augment_pad, cfg.augment_flip, gen)
        return normalizer(x).contiguous(memory_format=fmt)

    for i in range(3):
        batch(i)
    sync(device)
    start = time.perf_counter()
    for i in range(batches):
        batch(i)
    sync(device)
    return {"images_per_s": batches * args.batch / (time.perf_counter() - start), "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="wrn-16-8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only, as the engine)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps before them")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the median round is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--profile", action="store_true", help="also profile the plain and grouping steps")
    parser.add_argument("--params-dir", default=str(Path(__file__).resolve().parents[1] / "params"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    row = resolve(load_registry(args.params_dir), ROW, "paper")

    steps_total = args.warmup + args.steps
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.batch * steps_total, 3, args.image_size, args.image_size), generator=gen, dtype=torch.uint8
    )
    labels = torch.randint(0, NUM_CLASSES, (len(images),), generator=gen)
    data = DeviceData(images.to(device), labels.to(device))
    cfg = EngineConfig(
        device=str(device),
        batch_size=args.batch,
        eval_batch_size=500,
        channels_last=args.channels_last,
        bf16=args.bf16,
        compile=False,
        normalization="per_image",
        augment_pad=4,
        augment_flip=True,
        seed=0,
        checkpoint_every=10**6,
        log_every=10**6,
        threads=0,
    )

    results: dict[str, dict] = {}
    rounds: dict[str, list[dict]] = {"baseline": [], "plain": [], "grouping": []}
    for r in range(args.rounds):  # interleaved, so slow drifts of the machine hit every model alike
        for kind in rounds:
            rounds[kind].append(train_rate(kind, args, data, cfg, row))
            print(f"round {r + 1} train {kind:9s} {rounds[kind][-1]['images_per_s']:10.1f} img/s", flush=True)
    for kind, runs in rounds.items():  # medians over the rounds
        results[f"train_{kind}"] = {
            "images_per_s": statistics.median(x["images_per_s"] for x in runs),
            "step_ms_median": statistics.median(x["step_ms_median"] for x in runs),
            "step_ms_min": min(x["step_ms_min"] for x in runs),
            "timed_steps_per_round": runs[0]["timed_steps"],
            "rounds": runs,
        }
    results["regularizer_alone"] = regularizer_cost(args, device, cfg.channels_last, row)
    results["eval"] = eval_rate(args, data, cfg, row)
    results["pipeline"] = pipeline_rate(args, data, cfg)
    # grouping / plain step time, paired by round (interleaved runs see the same machine state)
    paired = [p["images_per_s"] / g["images_per_s"] for p, g in zip(rounds["plain"], rounds["grouping"])]
    overhead = statistics.median(paired)
    overhead_median = results["train_grouping"]["step_ms_median"] / results["train_plain"]["step_ms_median"]
    pipeline_ratio = results["pipeline"]["images_per_s"] / results["train_baseline"]["images_per_s"]
    # other processes only ever add time: the fastest step of each model is the least disturbed
    overhead_min = results["train_grouping"]["step_ms_min"] / results["train_plain"]["step_ms_min"]
    isolated = 1 + results["regularizer_alone"]["ms_median"] / results["train_plain"]["step_ms_median"]
    summary = {
        "regularizer_overhead": overhead,
        "regularizer_overhead_isolated": isolated,
        "regularizer_overhead_min_step": overhead_min,
        "regularizer_overhead_per_round": paired,
        "regularizer_overhead_median_step": overhead_median,
        "regularizer_overhead_target": 1.05,
        "regularizer_overhead_ok": overhead <= 1.05,
        "regularizer_overhead_isolated_ok": isolated <= 1.05,
        "pipeline_over_train": pipeline_ratio,
        "pipeline_over_train_target": 10.0,
        "pipeline_ok": pipeline_ratio >= 10.0,
    }

    print(
        f"\n{args.arch} {args.image_size}x{args.image_size} batch {args.batch} on {device}"
        f"{' bf16' if args.bf16 else ''}{' channels_last' if args.channels_last else ''}"
    )
    print(f"{'measurement':28s} {'images/s':>10s} {'step ms (median)':>17s}")
    for key, label in (
        ("train_baseline", "train (dense baseline)"),
        ("train_plain", "train (2-2-2 net, no reg.)"),
        ("train_grouping", "train (2-2-2 grouping)"),
    ):
        r = results[key]
        print(f"{label:28s} {r['images_per_s']:10.1f} {r['step_ms_median']:17.1f}")
    print(f"{'evaluate':28s} {results['eval']['images_per_s']:10.1f}")
    print(f"{'data pipeline':28s} {results['pipeline']['images_per_s']:10.1f}")
    print(
        f"regularizer overhead (grouping/plain step time): {overhead:.3f} (per round "
        f"{', '.join(f'{x:.3f}' for x in paired)}; median steps {overhead_median:.3f}; fastest steps "
        f"{overhead_min:.3f}; target <= 1.05) "
        f"{'OK' if summary['regularizer_overhead_ok'] else 'ABOVE TARGET'}"
    )
    print(
        f"regularizer alone (value + backward): {results['regularizer_alone']['ms_median']:.1f} ms per step "
        f"-> overhead {isolated:.3f} of the plain step"
    )
    print(
        f"data pipeline / training images/s: {pipeline_ratio:.1f}x (target >= 10x) "
        f"{'OK' if summary['pipeline_ok'] else 'BELOW TARGET'}"
    )

    if args.profile:
        for kind in ("plain", "grouping"):
            train_rate(kind, args, data, cfg, row, profile=True)

    load_after = os.getloadavg()
    out = Path(args.out or Path(__file__).parent / "results" / f"train_throughput-{device.type}-{args.arch}.json")
    atomic_write_json(
        out,
        {
            "benchmark": "train_throughput",
            "arch": args.arch,
            "device": str(device),
            "batch": args.batch,
            "image_size": args.image_size,
            "bf16": args.bf16,
            "channels_last": args.channels_last,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "split": row["group"]["split"],
            "row": ROW,
            "gammas": {k: row["group"][k] for k in ("gamma_disjoint", "gamma_weight", "gamma_balance", "weighted")},
            "machine": machine_info(),
            "results": results,
            "summary": summary,
            # other processes on the machine distort CPU timings: the 1-minute load before and after
            "loadavg_1min": {"before": load_before[0], "after": load_after[0]},
        },
    )
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
