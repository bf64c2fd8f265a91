"""``python -m splitnet.parallel check``, one process per worker (torchrun, srun).

    torchrun --standalone --nproc-per-node 4 -m splitnet.parallel check --model split/model.pt

``check`` runs a split model file branch-parallel on random input and compares the logits
with the sequential network's (exit 1 on a mismatch).  The finetune stage runs model-parallel
as ``torchrun ... -m splitnet finetune --parallel <the stage's arguments>``.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.distributed as dist

from .. import artifacts
from ..branches import SplitWideResNet
from .runner import ParallelSplit
from .workers import DEFAULT_TIMEOUT_S, WorkerFailure, init_from_env


def cmd_check(args: argparse.Namespace) -> int:
    worker = init_from_env(args.timeout, args.device)
    model, blob = artifacts.load_model(args.model)
    if blob["kind"] != "split":
        raise ValueError(
            f"{args.model} is a {blob['kind']} model: only split networks have branches to run in parallel"
        )
    assert isinstance(model, SplitWideResNet)  # kind "split"
    plan = artifacts.plan_from_dict(blob["plan"])
    shape = (plan.in_channels, args.image_size, args.image_size)
    model.eval().to(worker.device)
    net = ParallelSplit(model, shape, worker)
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(worker.device)
    with torch.inference_mode():
        out, ref = net(x), model(x)
    error = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    if worker.is_main:
        runs = ", ".join(
            f"worker {r}: leaves {run.start}..{run.stop - 1}" for r, run in enumerate(net.placement.ranges)
        )
        print(
            f"{blob['split']} on {worker.world} workers ({worker.backend}; {runs}); max relative difference to the "
            f"sequential network {error:.2e} (tolerance {args.tolerance:g}): {'OK' if error <= args.tolerance else 'MISMATCH'}",
            flush=True,
        )
    return 0 if error <= args.tolerance else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m splitnet.parallel", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds a collective waits for the other workers before failing (default %(default)g)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="branch-parallel logits of a split model file vs the sequential network")
    p.add_argument("--model", required=True, help="a split (or finetuned split) model.pt")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (worker i takes GPU i)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max relative difference (default %(default)g)")
    args = parser.parse_args(argv)
    try:
        return cmd_check(args)
    except WorkerFailure as err:
        print(f"splitnet.parallel {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"splitnet.parallel {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
