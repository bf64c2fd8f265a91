"""A tiny, fully deterministic training setup shared by tests/test_engine.py and its child processes.

The child processes (``python tests/engine_helpers.py <mode> <run_dir> ...``) train exactly what
the parent trains in-process, so that a run interrupted by SIGKILL or SIGTERM in one process and
resumed in another can be compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch

from splitnet.assignment import GroupAssignments
from splitnet.augment import Normalizer
from splitnet.engine import DeviceData, EngineConfig, Schedule, train
from splitnet.grouping_stage import GroupingModel
from splitnet.model import WideResNet, wrn_plan
from splitnet.reduced_gradient import SimplexReducedGradient
from splitnet.regularizers import RegularizerConfig, split_losses
from splitnet.spec import SplitSpec
from splitnet.topology import build_topology

NUM_IMAGES = 192
NUM_CLASSES = 4
SIDE = 8
BATCH = 32
STEPS_PER_EPOCH = NUM_IMAGES // BATCH
EPOCHS = 3
SCHEDULE = Schedule(epochs=EPOCHS, lr=0.05, milestones=(2,), lr_decay=0.1, momentum=0.9, weight_decay=5e-4)


def engine_config(**settings) -> EngineConfig:
    """The engine settings the tests train with; a test names what it changes."""
    base = dict(
        device="cpu",
        batch_size=BATCH,
        eval_batch_size=500,
        channels_last=True,
        bf16=False,
        compile=False,
        normalization="per_image",
        augment_pad=4,
        augment_flip=True,
        seed=0,
        checkpoint_every=1,
        log_every=50,
        threads=0,
    )
    return EngineConfig(**{**base, **settings})


def schedule(epochs: int, lr: float, **settings) -> Schedule:
    """A test schedule: no milestones, the paper's momentum and weight decay unless named."""
    return Schedule(
        **{
            "epochs": epochs,
            "lr": lr,
            "milestones": (),
            "lr_decay": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            **settings,
        }
    )


def tiny_data() -> DeviceData:
    """Random uint8 images whose label is the brightest quadrant (learnable, so losses move)."""
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 200, (NUM_IMAGES, 3, SIDE, SIDE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (NUM_IMAGES,), generator=g)
    half = SIDE // 2
    for i, y in enumerate(labels.tolist()):
        r, c = divmod(y, 2)
        images[i, :, r * half : (r + 1) * half, c * half : (c + 1) * half] += 55
    return DeviceData(images, labels)


def tiny_model(parametrisation: str = "simplex"):
    """WRN-10-1 with dropout in the split stages, plus Deep 2-2-2 assignment variables."""
    torch.manual_seed(7)
    plan = wrn_plan(10, 1, 3, NUM_CLASSES)
    net = WideResNet(plan, bn_no_scale=True, dropout=0.3, dropout_stages=(2, 3), dropout_fc=True)
    topology = build_topology(plan, SplitSpec.parse("2-2-2"))
    assignments = GroupAssignments(topology, parametrisation, generator=torch.Generator().manual_seed(8))
    return GroupingModel(net, assignments), topology


def run(
    run_dir: Path,
    *,
    resume: bool = False,
    checkpoint_every: int = 1,
    after_step=None,
    regularizer_hook=None,
    log_every: int = 2,
    parametrisation: str = "simplex",
):
    """Train the tiny grouping model (regularizers and reduced-gradient simplex optimizer on).

    Returns (model, TrainResult). ``regularizer_hook(step_index, total)`` may replace the
    regularizer value (used to inject a NaN).
    """
    torch.set_num_threads(1)
    model, topology = tiny_model(parametrisation)
    assignments = model.assignments
    reg_cfg = RegularizerConfig(1.0, 1.0, 10.0, True)
    calls = {"n": 0}

    def regularizer(step: int = 0):
        losses = split_losses(model.net, topology, assignments.matrices(), reg_cfg)
        total = 0.1 * losses.total
        if regularizer_hook is not None:
            total = regularizer_hook(calls["n"], total)
        calls["n"] += 1
        return total, {"reg_weight": losses.weight, "reg_disjoint": losses.disjoint}

    extra = []
    if parametrisation == "simplex":
        extra.append(SimplexReducedGradient(list(assignments.values.values()), lr=0.05, momentum=0.9, rule="official"))
    cfg = engine_config(augment_pad=2, seed=3, checkpoint_every=checkpoint_every, log_every=log_every)
    result = train(
        model,
        tiny_data(),
        SCHEDULE,
        cfg,
        run_dir,
        normalizer=Normalizer("per_image"),
        regularizer=regularizer,
        extra_optimizers=extra,
        after_step=after_step,
        resume=resume,
    )
    return model, result


def save_final(model, result, path: Path) -> None:
    torch.save({"state": model.state_dict(), "history": result.history, "resumed_from": result.resumed_from}, path)


def _child(argv: list[str]) -> None:
    mode, run_dir = argv[0], Path(argv[1])
    if mode == "kill-after-epoch":
        # SIGKILL ourselves two steps into epoch 2: the epoch-1 checkpoint exists, epoch 2's
        # progress is lost without any chance to clean up.
        def after_step(step: int) -> None:
            if step == STEPS_PER_EPOCH + 2:
                os.kill(os.getpid(), signal.SIGKILL)

        run(run_dir, after_step=after_step)
        sys.exit("not killed")  # unreachable
    if mode == "wait-for-sigterm":
        # After step ``at`` of epoch 2, announce it and wait for the parent's SIGTERM (the engine
        # turns it into a flag checked before the next step).
        at, ready, go = int(argv[2]), Path(argv[3]), Path(argv[4])

        def after_step(step: int) -> None:
            if step == STEPS_PER_EPOCH + at:
                ready.write_text("ready")
                deadline = time.monotonic() + 60
                while not go.exists() and time.monotonic() < deadline:
                    time.sleep(0.005)

        run(run_dir, after_step=after_step, checkpoint_every=100)
        sys.exit("finished without being preempted")
    if mode == "resume":
        model, result = run(run_dir, resume=True, checkpoint_every=int(argv[3]) if len(argv) > 3 else 1)
        save_final(model, result, Path(argv[2]))
        return
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    _child(sys.argv[1:])
