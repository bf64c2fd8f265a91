"""The training engine: bit-for-bit resume after SIGKILL / SIGTERM, non-finite loss, determinism,
weight-decay groups, the lr schedule, augmentation and normalisation."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import engine_helpers as H
import pytest
import torch
from torch import nn

from splitnet.augment import Normalizer, random_crop_flip
from splitnet.engine import CHECKPOINT, EXIT_PREEMPTED, DeviceData, NonFiniteLoss, Preempted, parameter_groups, train
from splitnet.model import WideResNet, wrn_plan

HELPER = Path(H.__file__)
ROOT = HELPER.parents[1]


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """Training here sets torch's thread count process-wide; give later test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run (same code as the children run)."""
    model, result = H.run(tmp_path_factory.mktemp("straight"))
    return model.state_dict(), result.history


def _child(*args: str, timeout: float = 120) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPER.parent), str(ROOT / "src")])}
    return subprocess.Popen(
        [sys.executable, str(HELPER), *map(str, args)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different}"


def test_resume_after_sigkill_is_bit_for_bit(straight, tmp_path):
    run_dir = tmp_path / "run"
    code, out = _finish(_child("kill-after-epoch", run_dir))
    assert code == -signal.SIGKILL, out
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)  # the epoch-1 checkpoint; epoch 2 was lost

    final = tmp_path / "final.pt"
    code, out = _finish(_child("resume", run_dir, final))
    assert code == 0, out
    assert "resumed from" in out
    got = torch.load(final, weights_only=True)
    assert got["resumed_from"] == (1, 0)
    ref_state, ref_history = straight
    assert_same_state(ref_state, got["state"])
    assert got["history"] == ref_history
    assert len(ref_history) == H.EPOCHS


def test_sigterm_mid_epoch_checkpoints_exits_75_and_resumes_bit_for_bit(straight, tmp_path):
    run_dir, ready, go = tmp_path / "run", tmp_path / "ready", tmp_path / "go"
    at = 3  # steps into epoch 2
    proc = _child("wait-for-sigterm", run_dir, at, ready, go)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "child never reached the signalling point"
        time.sleep(0.01)
    assert not (run_dir / CHECKPOINT).exists()  # checkpoint_every is large: nothing saved so far
    proc.send_signal(signal.SIGTERM)
    go.write_text("go")
    code, out = _finish(proc)
    assert code == EXIT_PREEMPTED == 75, out
    assert "SIGTERM: checkpoint written at epoch 2 step 3" in out

    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, at)
    assert 0 < state["step"] < H.STEPS_PER_EPOCH
    assert state["perm"] is not None and len(state["history"]) == 1

    final = tmp_path / "final.pt"
    code, out = _finish(_child("resume", run_dir, final, 100))
    assert code == 0, out
    got = torch.load(final, weights_only=True)
    assert got["resumed_from"] == (1, at)
    ref_state, ref_history = straight
    assert_same_state(ref_state, got["state"])
    # The interrupted epoch's mean losses include the steps before the preemption.
    assert got["history"] == ref_history


def test_resume_in_process_after_preemption(straight, tmp_path):
    """Same as above without subprocesses, SIGTERM delivered to ourselves (the main thread)."""

    def after_step(step: int) -> None:
        if step == 2 * H.STEPS_PER_EPOCH + 1:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as info:
        H.run(tmp_path, after_step=after_step)
    assert info.value.code == EXIT_PREEMPTED
    assert signal.getsignal(signal.SIGTERM) == previous  # the engine's handler is removed again
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 1)
    model, result = H.run(tmp_path, resume=True)
    assert result.resumed_from == (2, 1)
    assert_same_state(straight[0], model.state_dict())
    assert result.history == straight[1]


def test_resume_with_other_config_starts_from_scratch(straight, tmp_path, capsys):
    H.run(tmp_path)
    model = H.tiny_model()[0]
    cfg = H.engine_config(seed=3)
    other = H.schedule(epochs=1, lr=0.01)
    result = train(model, H.tiny_data(), other, cfg, tmp_path, normalizer=Normalizer("per_image"), resume=True)
    assert result.resumed_from is None
    assert "made from other inputs" in capsys.readouterr().out


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    bad_step = H.STEPS_PER_EPOCH + 2  # epoch 2, third step
    saved = {}

    def hook(n, total):
        if n == bad_step:
            saved["bytes"] = (tmp_path / CHECKPOINT).read_bytes()  # the epoch-1 checkpoint
            return total * float("nan")
        return total

    with pytest.raises(NonFiniteLoss, match=r"loss became nan at epoch 2 step 4.*last good checkpoint") as info:
        H.run(tmp_path, regularizer_hook=hook, log_every=2)
    assert str(tmp_path / CHECKPOINT) in str(info.value)
    assert (tmp_path / CHECKPOINT).read_bytes() == saved["bytes"]
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_loss_checked_at_epoch_end_before_saving(tmp_path):
    """log_every larger than an epoch: the end-of-epoch check still runs before the save."""
    saved = {}

    def hook(n, total):
        if n == H.STEPS_PER_EPOCH + 1:
            saved["bytes"] = (tmp_path / CHECKPOINT).read_bytes()
            return total + float("inf")
        return total

    with pytest.raises(NonFiniteLoss, match="epoch 2 step 6"):
        H.run(tmp_path, regularizer_hook=hook, log_every=1000)
    assert (tmp_path / CHECKPOINT).read_bytes() == saved["bytes"]


def test_sigterm_after_non_finite_loss_does_not_overwrite_checkpoint(tmp_path):
    """A preemption between the NaN and the next check must not save the poisoned weights."""
    saved = {}

    def hook(n, total):
        if n == H.STEPS_PER_EPOCH + 1:
            saved["bytes"] = (tmp_path / CHECKPOINT).read_bytes()
            return total * float("nan")
        return total

    def after_step(step: int) -> None:
        if step == H.STEPS_PER_EPOCH + 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(NonFiniteLoss):
        H.run(tmp_path, regularizer_hook=hook, after_step=after_step, log_every=1000)
    assert (tmp_path / CHECKPOINT).read_bytes() == saved["bytes"]


def test_training_is_deterministic_given_the_seed(straight, tmp_path):
    model, result = H.run(tmp_path)
    assert_same_state(straight[0], model.state_dict())
    assert result.history == straight[1]
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    # and the run actually trained: weights moved, simplex columns stay on the simplex
    init = H.tiny_model()[0].state_dict()
    assert not torch.equal(init["net.fc.weight"], model.state_dict()["net.fc.weight"])
    for name, value in model.assignments.values.items():
        assert torch.allclose(value.sum(0), torch.ones(value.shape[1]), atol=1e-5), name
        assert value.min() >= 0


def test_extra_optimizer_parameters_are_not_also_updated_by_sgd(tmp_path):
    """Simplex assignments belong to the reduced-gradient optimizer alone."""
    model, _ = H.tiny_model("simplex")
    data = H.tiny_data()
    p = model.assignments.values["head_out"]
    before = p.detach().clone()
    # A reduced-gradient optimizer with a tiny lr: if SGD (lr 0.05, momentum) also stepped the
    # assignments they would move by far more than the reduced gradient allows.
    from splitnet.reduced_gradient import SimplexReducedGradient

    extra = SimplexReducedGradient([p], lr=1e-12, rule="paper")

    def regularizer(step: int = 0):
        a = model.assignments.matrix("head_out")
        return (a * torch.arange(a.numel(), dtype=a.dtype).view_as(a)).sum(), {}

    cfg = H.engine_config()
    train(
        model,
        data,
        H.schedule(epochs=1, lr=0.05),
        cfg,
        tmp_path,
        normalizer=Normalizer("per_image"),
        regularizer=regularizer,
        extra_optimizers=[extra],
    )
    assert (p.detach() - before).abs().max() < 1e-6


def test_weight_decay_only_on_conv_and_fc_weights():
    model, _ = H.tiny_model("softmax")
    groups = parameter_groups(model, 5e-4)
    decay, rest = groups
    assert decay["weight_decay"] == 5e-4 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    expected = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert decayed == {f"{n}.weight" for n in expected}
    undecayed = {names[id(p)] for p in rest["params"]}
    assert "net.fc.bias" in undecayed
    assert any(n.startswith("assignments.values.") for n in undecayed)
    assert all(n.endswith(".bias") or ".bn" in n or "final_bn" in n or n.startswith("assignments.") for n in undecayed)
    assert decayed.isdisjoint(undecayed)
    # every trainable parameter is in exactly one group
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= decayed | undecayed


def test_lr_schedule():
    s = H.schedule(epochs=10, lr=0.1, milestones=(3, 6), lr_decay=0.2)
    got = [s.lr_at(e) for e in range(10)]
    want = [0.1] * 3 + [0.02] * 3 + [0.004] * 4
    assert got == pytest.approx(want)
    assert H.schedule(epochs=5, lr=0.3).lr_at(4) == 0.3


def test_engine_applies_the_schedule_to_every_optimizer(tmp_path):
    """The lr each optimizer actually steps with, read at every step, follows Schedule.lr_at."""
    torch.manual_seed(0)
    model = WideResNet(wrn_plan(10, 1, 3, H.NUM_CLASSES))
    dummy = nn.Parameter(torch.zeros(2, 3))
    extra = torch.optim.SGD([dummy], lr=1.0)
    schedule = H.schedule(epochs=4, lr=0.1, milestones=(1, 3), lr_decay=0.5)
    seen = []
    cfg = H.engine_config(batch_size=96)
    result = train(
        model,
        H.tiny_data(),
        schedule,
        cfg,
        tmp_path,
        normalizer=Normalizer("per_image"),
        extra_optimizers=[extra],
        after_step=lambda step: seen.append(extra.param_groups[0]["lr"]),
    )
    steps = H.NUM_IMAGES // 96
    assert seen == pytest.approx([f for f in (1.0, 0.5, 0.5, 0.25) for _ in range(steps)])
    assert [row["lr"] for row in result.history] == pytest.approx([0.1, 0.05, 0.05, 0.025])


def test_batch_larger_than_data_is_an_error(tmp_path):
    model = WideResNet(wrn_plan(10, 1, 3, H.NUM_CLASSES))
    with pytest.raises(ValueError, match="batch size"):
        train(
            model,
            H.tiny_data(),
            H.schedule(epochs=1, lr=0.1),
            H.engine_config(batch_size=1000),
            tmp_path,
            normalizer=Normalizer("per_image"),
        )


# ----------------------------------------------------------------------------- augmentation


def _candidates(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Every crop (offsets 0..2*pad in both axes) with and without flip: K x B x C x H x W."""
    x = torch.nn.functional.pad(images.float(), (pad,) * 4, mode="reflect")
    h, w = images.shape[2:]
    out = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = x[:, :, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(3)]
    return torch.stack(out)


def test_random_crop_flip_shape_offsets_and_flip_rate():
    pad, b, c, h, w = 2, 4000, 3, 8, 8
    base = torch.arange(c * h * w, dtype=torch.float32).view(1, c, h, w)  # every pixel distinct
    images = base.expand(b, -1, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, pad, True, gen)
    assert out.shape == images.shape and out.dtype == torch.float32
    cands = _candidates(base, pad)[:, 0]  # K x C x H x W
    match = (out[:, None] == cands[None]).flatten(2).all(2)  # B x K
    assert (match.sum(1) == 1).all(), "every output is exactly one crop (offset 0..2*pad) of the input"
    k = match.float().argmax(1)
    offsets, flipped = k // 2, k % 2 == 1
    counts = torch.bincount(offsets, minlength=(2 * pad + 1) ** 2)
    assert (counts > 0).all(), "every offset in 0..2*pad occurs"
    expected = b / (2 * pad + 1) ** 2
    assert ((counts - expected).abs() < 5 * expected**0.5).all()
    assert 0.45 < flipped.float().mean() < 0.55

    # uint8 input gives the same values, no flip when disabled, identity without pad and flip
    out8 = random_crop_flip(images[:50].to(torch.uint8).clamp(0, 255), pad, False, torch.Generator().manual_seed(1))
    cands8 = _candidates(base.to(torch.uint8), pad)[0::2, 0]  # unflipped only
    assert ((out8[:, None] == cands8[None]).flatten(2).all(2).sum(1) >= 1).all()
    assert torch.equal(random_crop_flip(images[:5], 0, False, gen), images[:5])


def test_random_crop_flip_is_reproducible_from_the_generator():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(images, 4, True, torch.Generator().manual_seed(5))
    b = random_crop_flip(images, 4, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_per_image_normalisation_zero_mean_unit_std():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 8, 8, generator=g) * torch.tensor([50.0, 100.0, 255.0]).view(1, 3, 1, 1) + 7
    y = Normalizer("per_image")(x)
    assert torch.allclose(y.mean((2, 3)), torch.zeros(10, 3), atol=1e-5)
    assert torch.allclose(y.std((2, 3), unbiased=False), torch.ones(10, 3), atol=1e-4)
    flat = Normalizer("per_image")(torch.full((1, 1, 4, 4), 9.0))  # TF floor: no division by zero
    assert torch.equal(flat, torch.zeros_like(flat))


def test_dataset_normalisation():
    g = torch.Generator().manual_seed(0)
    train_images = torch.randint(0, 256, (50, 3, 4, 4), generator=g, dtype=torch.uint8)
    y = Normalizer("dataset", train_images)(train_images.float())
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    with pytest.raises(ValueError):
        Normalizer("dataset")
    with pytest.raises(ValueError):
        Normalizer("bogus")


def test_device_data_keeps_uint8():
    split = {"images": torch.zeros(3, 1, 4, 4, dtype=torch.uint8), "labels": torch.tensor([0, 1, 2])}
    data = DeviceData.from_split(split, torch.device("cpu"))
    assert len(data) == 3 and data.images.dtype == torch.uint8


# ----------------------------------------------------------------------------- backend flags


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        ("paper", {"cudnn_benchmark": True, "fp32_precision": "tf32"}),  # bf16 training: TF32 for the fp32 rest
        ("paper_fp32", {"cudnn_benchmark": True, "fp32_precision": "ieee"}),  # fp32 means fp32
        ("cpu", {}),
        ("planted", {}),
        ("smoke", {}),
        ("ci", {}),
    ],
)
def test_the_backend_flags_each_scale_trains_with(scale, expected):
    """What the engine sets on the device the scale trains on (auto = CUDA on a GPU node)."""
    import torch

    from splitnet.config import load_registry, resolve
    from splitnet.engine import EngineConfig, apply_backend_flags, backend_flags

    engine = EngineConfig(
        **resolve(load_registry(Path(__file__).resolve().parents[1] / "params"), "deep", scale, 0)["engine"]
    )
    device = torch.device("cuda" if engine.device in ("auto", "cuda") else engine.device)
    flags = backend_flags(engine, device)
    assert flags == expected
    if not flags or not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
    )
    try:
        apply_backend_flags(flags)
        assert torch.backends.cudnn.benchmark is True
        assert (
            torch.backends.cuda.matmul.fp32_precision
            == torch.backends.cudnn.conv.fp32_precision
            == expected["fp32_precision"]
        )
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved[1], saved[2]


# ----------------------------------------------------------------------------- torch.compile


# Compiled kernels sum in another order, so the two runs part by float32 rounding (~1e-7) that
# training then amplifies: about 1e-3 relative by step 40 on this task, in either direction.
# Early epochs must agree to rounding; later ones only to within what amplified rounding explains,
# which still catches a step that computes something else (the regulariser is half of this loss).
EXACT_EPOCHS, COMPILE_TOLERANCE_EARLY, COMPILE_TOLERANCE_LATE = 3, 1e-5, 2e-2


@pytest.mark.slow
@pytest.mark.parametrize("grouping", [False, True], ids=["baseline_step", "deep_grouping_step"])
def test_compiled_training_follows_eager_training(tmp_path, grouping):
    """`engine.compile: true` (what the GPU check may choose): 48 steps (8 epochs of 6) of a dense
    step and of a Deep grouping step (regularisers on; no dropout, whose compiled RNG differs)
    give the same losses as eager mode: to rounding for EXACT_EPOCHS, then to amplified rounding."""
    import torch

    from splitnet.assignment import GroupAssignments
    from splitnet.augment import Normalizer
    from splitnet.engine import train
    from splitnet.grouping_stage import GroupingModel
    from splitnet.model import WideResNet, wrn_plan
    from splitnet.regularizers import RegularizerConfig, split_losses
    from splitnet.spec import SplitSpec
    from splitnet.topology import build_topology

    torch.set_num_threads(1)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(7)
        plan = wrn_plan(10, 1, 3, H.NUM_CLASSES)
        net = WideResNet(plan, bn_no_scale=grouping)
        model, regularizer = net, None
        if grouping:
            topology = build_topology(plan, SplitSpec.parse("2-2-2"))
            assignments = GroupAssignments(topology, "softmax", generator=torch.Generator().manual_seed(8))
            model = GroupingModel(net, assignments)

            def regularizer(step: int = 0, model=model, topology=topology, assignments=assignments):
                parts = split_losses(
                    model.net, topology, assignments.matrices(), RegularizerConfig(1.0, 1.0, 10.0, True)
                )
                return 0.1 * parts.total, {"reg_weight": parts.weight}

        result = train(
            model,
            H.tiny_data(),
            H.schedule(8, 0.05),
            H.engine_config(compile=compiled, seed=3),
            tmp_path / f"compiled_{compiled}",
            normalizer=Normalizer("per_image"),
            regularizer=regularizer,
        )
        losses[compiled] = [row["train_loss"] for row in result.history]
    assert len(losses[True]) == 8
    for epoch, (eager, compiled) in enumerate(zip(losses[False], losses[True])):
        tolerance = COMPILE_TOLERANCE_EARLY if epoch < EXACT_EPOCHS else COMPILE_TOLERANCE_LATE
        assert compiled == pytest.approx(eager, rel=tolerance), (epoch, losses)
