"""The one training loop used by every stage (baseline, grouping, SSL, finetuning).

Fast by design: the whole dataset sits on the training device as uint8, batches are augmented
with tensor ops on that device, there is no DataLoader and no worker process; channels_last,
optional bf16 autocast (CUDA) and optional ``torch.compile``.

Robust by design: a checkpoint (model, optimizers, RNG states, position in the epoch) is written
atomically every ``checkpoint_every`` epochs, at the end, and on SIGTERM (then the process exits
with ``EXIT_PREEMPTED``); ``resume=True`` continues bit-for-bit on CPU.  A non-finite loss stops
training with ``NonFiniteLoss`` and leaves the last good checkpoint untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Normalizer, random_crop_flip
from .io import REWRITE, atomic_torch_save, load_torch_file
from .run_control import Progress, sigterm_flag

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; SLURM/Snakemake retries resume from the checkpoint
CHECKPOINT = "checkpoint.pt"
# regularizer(updates made so far) -> (extra loss, named parts averaged into the epoch's history row)
Regularizer = Callable[[int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class Preempted(SystemExit):
    """Raised after the SIGTERM checkpoint has been written."""

    def __init__(self) -> None:
        super().__init__(EXIT_PREEMPTED)


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum and an epoch-based step schedule (lr x ``lr_decay`` at each milestone)."""

    epochs: int
    lr: float
    milestones: tuple[int, ...]
    lr_decay: float
    momentum: float
    weight_decay: float

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay ** sum(epoch >= m for m in self.milestones)


@dataclass(frozen=True)
class EngineConfig:
    """How the engine trains; a scale's ``engine`` section (params/scales.yaml) sets every field."""

    device: str  # "auto": CUDA when available
    batch_size: int
    eval_batch_size: int
    channels_last: bool
    bf16: bool  # autocast to bfloat16 on CUDA
    compile: bool
    normalization: str
    augment_pad: int
    augment_flip: bool
    seed: int
    checkpoint_every: int  # epochs
    log_every: int  # steps between plain log lines / finiteness checks
    threads: int  # torch CPU threads, 0 = torch's default


def backend_flags(cfg: EngineConfig, device: torch.device) -> dict[str, object]:
    """The CUDA backend settings a run uses: cuDNN autotuning (every step has the same shapes), and
    fp32 matmuls and convolutions as true IEEE fp32 unless the scale already trains in bf16 (then
    the fp32 remainder may use TF32). Off CUDA there is nothing to set."""
    if device.type != "cuda":
        return {}
    return {"cudnn_benchmark": True, "fp32_precision": "tf32" if cfg.bf16 else "ieee"}


def apply_backend_flags(flags: dict[str, object]) -> None:
    """Set :func:`backend_flags`' settings (the TF32 API of torch >= 2.9, else the legacy flags)."""
    if not flags:
        return
    torch.backends.cudnn.benchmark = bool(flags["cudnn_benchmark"])
    precision = str(flags["fp32_precision"])
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        # mixing the two APIs makes torch refuse to read the flags: use only the new one
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision  # type: ignore[attr-defined]
    else:  # pragma: no cover - torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class DeviceData:
    """A split held on the training device."""

    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N

    @classmethod
    def from_split(cls, split: dict, device: torch.device) -> DeviceData:
        return cls(split["images"].to(device), split["labels"].to(device))

    def __len__(self) -> int:
        return len(self.labels)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/fc weights only (official); none on BN, biases or assignments."""
    decay, rest = [], []
    for module in model.modules():
        # Frozen parameters stay in the groups (SGD skips a None grad), so a checkpoint's
        # optimizer state always matches the groups of a freshly built model.
        for name, p in module.named_parameters(recurse=False):
            if name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                decay.append(p)
            else:
                rest.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def default_digest(schedule: Schedule, cfg: EngineConfig) -> str:
    """For direct library use; the pipeline stages pass :func:`splitnet.fingerprint.stage_digest`."""
    return hashlib.sha256(json.dumps([asdict(schedule), asdict(cfg)], sort_keys=True).encode()).hexdigest()


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint this engine wrote; anything else is a ValueError naming the file."""
    state = load_torch_file(path, map_location=map_location)
    if not isinstance(state, dict) or not isinstance(state.get("digest"), str):
        raise ValueError(f"{path}: not a checkpoint written by this project; {REWRITE}")
    return state


def checkpoint_digest(run_dir: Path) -> str | None:
    """The input digest a run directory's checkpoint was written with (None: no checkpoint)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    return load_checkpoint(path)["digest"]


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, normalizer: Normalizer, cfg: EngineConfig) -> dict[str, float]:
    """Top-1 error (%) and mean cross-entropy, eval mode, no augmentation."""
    device = data.images.device
    was_training = model.training
    model.eval()
    correct, loss_sum = torch.zeros((), device=device), torch.zeros((), device=device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for start in range(0, len(data), cfg.eval_batch_size):
        x = normalizer(data.images[start : start + cfg.eval_batch_size].float()).contiguous(memory_format=fmt)
        y = data.labels[start : start + cfg.eval_batch_size]
        with _autocast(device, cfg.bf16):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(data)
    return {"error": 100.0 * (1 - correct.item() / n), "loss": loss_sum.item() / n}


def _autocast(device: torch.device, bf16: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    resumed_from: tuple[int, int] | None = None


def _build_optimizers(
    model: nn.Module, schedule: Schedule, extra_optimizers: Sequence[torch.optim.Optimizer]
) -> list[torch.optim.Optimizer]:
    """SGD, then ``extra_optimizers``; parameters an extra optimizer owns are updated by it alone."""
    owned = {id(p) for o in extra_optimizers for g in o.param_groups for p in g["params"]}
    groups = [
        {**g, "params": [p for p in g["params"] if id(p) not in owned]}
        for g in parameter_groups(model, schedule.weight_decay)
    ]
    sgd = torch.optim.SGD([g for g in groups if g["params"]], lr=schedule.lr, momentum=schedule.momentum)
    return [sgd, *extra_optimizers]


def _set_epoch_lr(optimizers: list[torch.optim.Optimizer], schedule: Schedule, epoch: int) -> None:
    """Each group's lr (the extra optimizers' too) becomes its initial lr times the epoch's factor."""
    lr_factor = schedule.lr_at(epoch) / schedule.lr
    for o in optimizers:
        for group in o.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * lr_factor


class _Run:
    """A run's mutable state: what a checkpoint holds, and the current epoch's loss sums."""

    def __init__(
        self,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        gen: torch.Generator,
        device: torch.device,
        steps_per_epoch: int,
        ckpt_path: Path,
        digest: str,
    ) -> None:
        self.model, self.optimizers, self.gen, self.device = model, optimizers, gen, device
        self.steps_per_epoch, self.ckpt_path, self.digest = steps_per_epoch, ckpt_path, digest
        self.epoch, self.step = 0, 0  # finished epochs, updates made in the current one
        self.perm: torch.Tensor | None = None  # the current epoch's shuffle (None: not drawn yet)
        self.running, self.seen = torch.zeros((), device=device), 0  # the epoch's loss sum (on the device), steps
        self.parts_sum: dict[str, torch.Tensor] = {}  # and sums of the regularizer's named parts
        self.history: list[dict] = []
        self.resumed_from: tuple[int, int] | None = None

    @property
    def updates(self) -> int:  # made so far
        return self.epoch * self.steps_per_epoch + self.step

    def restore(self) -> None:
        """Continue from the checkpoint if it was written from the same inputs."""
        state = load_checkpoint(self.ckpt_path, self.device)
        if state["digest"] != self.digest:
            print(
                f"{self.ckpt_path} was made from other inputs (config, data, source model or code); "
                "not resuming it, starting from scratch",
                flush=True,
            )
            return
        self.model.load_state_dict(state["model"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        self.gen.set_state(state["data_rng"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu())
        self.epoch, self.step, self.perm = state["epoch"], state["step"], state["perm"]
        if (partial := state.get("partial")) is not None:  # so the epoch's row equals an uninterrupted run's
            self.running, self.parts_sum, self.seen = partial["running"], dict(partial["parts_sum"]), partial["seen"]
        self.history = list(state["history"])
        self.resumed_from = (self.epoch, self.step)
        print(f"resumed from {self.ckpt_path} at epoch {self.epoch + 1} step {self.step}", flush=True)

    def save(self, mid_epoch: bool = False) -> None:
        """Write the checkpoint atomically; ``mid_epoch`` also keeps the epoch's loss sums."""
        partial = {"running": self.running, "parts_sum": self.parts_sum, "seen": self.seen} if mid_epoch else None
        atomic_torch_save(
            {
                "digest": self.digest,
                "model": self.model.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "data_rng": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
                "epoch": self.epoch,
                "step": self.step,
                "perm": self.perm,
                "history": self.history,
                "partial": partial,
            },
            self.ckpt_path,
        )

    def start_epoch(self, num_images: int) -> torch.Tensor:
        """Returns the epoch's shuffle; a new epoch (not a mid-epoch resume) draws it and zeroes the sums."""
        if self.perm is None:
            self.perm = torch.randperm(num_images, device=self.device, generator=self.gen)
            self.running, self.parts_sum, self.seen = torch.zeros((), device=self.device), {}, 0
        return self.perm

    def train_step(
        self,
        runner: Callable[[torch.Tensor], torch.Tensor],
        data: DeviceData,
        idx: torch.Tensor,
        normalizer: Normalizer,
        cfg: EngineConfig,
        regularizer: Regularizer | None,
    ) -> None:
        """One update of every optimizer on the batch ``data[idx]``, augmented with the data RNG."""
        x = random_crop_flip(data.images[idx], cfg.augment_pad, cfg.augment_flip, self.gen)
        x = normalizer(x).contiguous(
            memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format
        )
        with _autocast(self.device, cfg.bf16):
            logits = runner(x)
        loss = F.cross_entropy(logits.float(), data.labels[idx])
        if regularizer is not None:
            extra, parts = regularizer(self.updates)
            loss = loss + extra
            for k, v in parts.items():
                self.parts_sum[k] = self.parts_sum.get(k, 0.0) + v.detach()
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in self.optimizers:
            o.step()
        self.running += loss.detach()
        self.seen += 1
        self.step += 1

    def mean_loss(self) -> float:
        """The epoch's mean loss so far (one device sync); a non-finite one stops training."""
        mean = (self.running / self.seen).item()
        if not math.isfinite(mean):
            raise NonFiniteLoss(
                f"loss became {mean} at epoch {self.epoch + 1} step {self.step}; the last good "
                f"checkpoint {self.ckpt_path} is kept. Lower the learning rate or check the data."
            )
        return mean

    def preempt(self) -> NoReturn:
        """On SIGTERM: checkpoint mid-epoch (unless the loss went non-finite) and exit."""
        if self.seen and not math.isfinite(mean := (self.running / self.seen).item()):
            raise NonFiniteLoss(
                f"loss became {mean} at epoch {self.epoch + 1} before step {self.step + 1} "
                f"(found on SIGTERM); the last good checkpoint {self.ckpt_path} is kept."
            )
        self.save(mid_epoch=True)
        print(f"SIGTERM: checkpoint written at epoch {self.epoch + 1} step {self.step}; exiting", flush=True)
        raise Preempted()

    def end_epoch(
        self,
        lr: float,
        end_of_epoch: Callable[[int], dict[str, float]] | None,
        on_log: Callable[[int, dict[str, float]], None] | None,
    ) -> None:
        """Append the epoch's history row (mean loss and parts, ``end_of_epoch``'s metrics); go to the next."""
        row = {"epoch": self.epoch + 1, "lr": lr, "train_loss": (self.running / self.seen).item()}
        row.update({k: (v / self.seen).item() for k, v in self.parts_sum.items()})
        if end_of_epoch is not None:
            row.update(end_of_epoch(self.epoch))
        self.history.append(row)
        if on_log is not None:
            on_log(self.epoch + 1, {k: v for k, v in row.items() if k != "epoch"})
        self.epoch, self.step, self.perm = self.epoch + 1, 0, None


def train(
    model: nn.Module,
    data: DeviceData,
    schedule: Schedule,
    cfg: EngineConfig,
    run_dir: Path,
    *,
    normalizer: Normalizer,
    regularizer: Regularizer | None = None,
    extra_optimizers: Sequence[torch.optim.Optimizer] = (),
    after_step: Callable[[int], None] | None = None,
    end_of_epoch: Callable[[int], dict[str, float]] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    resume: bool = False,
    digest: str | None = None,
) -> TrainResult:
    """Train ``model`` in place; the model must already be on the data's device.

    ``regularizer(step)`` returns (extra loss, named parts) computed once per step outside autocast,
    given the number of updates made before this one (a ramp can depend on it);
    ``extra_optimizers`` step after the SGD optimizer (e.g. the simplex assignments);
    ``after_step(step)`` runs after every update, with the number of updates made so far; ``end_of_epoch(epoch)`` returns extra metrics
    (validation, freezing events) for the epoch's history row, which also goes to ``on_log``.
    ``digest`` names everything the result depends on: a checkpoint written with another digest
    is never loaded (the run starts from scratch and says so in one line).
    """
    device = data.images.device
    optimizers = _build_optimizers(model, schedule, extra_optimizers)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    steps_per_epoch = len(data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {len(data)} training images")
    digest = digest if digest is not None else default_digest(schedule, cfg)
    run = _Run(model, optimizers, gen, device, steps_per_epoch, Path(run_dir) / CHECKPOINT, digest)
    if resume and run.ckpt_path.exists():
        run.restore()
    if (after_load := getattr(model, "after_load", None)) is not None:
        after_load()
    runner = torch.compile(model) if cfg.compile else model
    progress = Progress(schedule.epochs * steps_per_epoch)
    model.train()
    with sigterm_flag() as signals:
        while run.epoch < schedule.epochs:
            _set_epoch_lr(optimizers, schedule, run.epoch)
            perm = run.start_epoch(len(data))
            while run.step < steps_per_epoch:
                if signals["term"]:
                    run.preempt()
                idx = perm[run.step * cfg.batch_size : (run.step + 1) * cfg.batch_size]
                run.train_step(runner, data, idx, normalizer, cfg, regularizer)
                if after_step is not None:
                    after_step(run.updates)
                if run.step % cfg.log_every == 0 or run.step == steps_per_epoch:
                    progress.step(run.epoch, run.step, steps_per_epoch, run.mean_loss())
            run.end_epoch(schedule.lr_at(run.epoch), end_of_epoch, on_log)
            if run.epoch % cfg.checkpoint_every == 0 or run.epoch == schedule.epochs:
                run.save()
    progress.close()
    return TrainResult(run.history, run.resumed_from)
