"""The finetune stage, model-parallel: ``stages.stage_finetune`` on every worker of the group.

Every worker runs the same stage code on the same data (identical batches: one seed) with a
``ParallelSplit`` in place of the split network.  Worker 0 is the stage: its record, model
file and checkpoints go to ``out_dir``, exactly where the sequential stage writes them.  The
other workers keep their own checkpoints (and a copy of the result) under
``out_dir/.workers/rank<r>/``, so an interrupted parallel run resumes every worker.

All workers take one decision together: restore worker 0's finished result, resume (only when
every worker has a checkpoint of the same inputs and the same step), or start fresh.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .. import artifacts, finished
from ..branches import SplitWideResNet
from ..data import read_manifest
from ..engine import CHECKPOINT, load_checkpoint
from ..stage_run import (
    KEPT_OUTPUTS,
    MODEL_FILE,
    StageStart,
    manifest_file,
    save_finetuned,
    stage_recorder,
    start_stage,
    train_stage,
)
from .runner import ParallelSplit
from .workers import DEFAULT_TIMEOUT_S, Worker, collective, init_from_env

WORKERS_DIR = ".workers"


def worker_dir(out_dir: Path, worker: Worker) -> Path:
    """Where a worker writes: the stage's directory for worker 0, a scratch folder below it otherwise."""
    return out_dir if worker.is_main else out_dir / WORKERS_DIR / f"rank{worker.rank}"


def _position(own: Path, start: StageStart) -> tuple[int, int]:
    """(epoch, step) of this worker's checkpoint, (-1, -1) without one to resume."""
    if not start.resume:
        return -1, -1
    state = load_checkpoint(own / CHECKPOINT)
    return state["epoch"], state["step"]


def _agree(worker: Worker, own: Path, start: StageStart) -> StageStart:
    """Worker 0 decides about restoring its finished result; all workers resume only from
    checkpoints of the same step (a preemption can reach them on either side of a step)."""
    restored = torch.tensor([float(start.restored)], device=worker.comm_device)
    position = torch.tensor(_position(own, start), device=worker.comm_device, dtype=torch.float64)
    low, high = -position, position.clone()
    with collective(worker, "agreeing on resume"):
        dist.broadcast(restored, src=0, group=worker.group)
        dist.all_reduce(low, op=dist.ReduceOp.MAX, group=worker.group)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=worker.group)
    resume = bool(torch.equal(-low, high) and high[0] >= 0)
    if start.resume and not resume:
        print(f"{own}: the workers' checkpoints are of different steps (or some have none); starting fresh", flush=True)
    return StageStart(start.digest, resume=resume, restored=bool(restored.item()))


def finetune_stage(cfg: dict, data_dir: Path, source: Path, out_dir: Path, resume: bool, worker: Worker) -> Path:
    """Finetune the split network ``source`` on all workers; worker 0 writes ``out_dir/model.pt``."""
    kind = artifacts.load_artifact(source)["kind"]
    if kind != "split":
        raise ValueError(f"{source} is a {kind} model: only split networks have branches to run in parallel")
    own = worker_dir(Path(out_dir), worker)
    inputs = {"data": manifest_file(data_dir), "source": source}
    start = _agree(worker, own, start_stage(cfg, "finetune", own, inputs, resume))
    if start.restored:
        return Path(out_dir) / MODEL_FILE
    with stage_recorder(cfg, "finetune", own, start) as rec:
        model, blob = artifacts.load_model(source)
        assert isinstance(model, SplitWideResNet)  # checked above: the source is a split network
        net = ParallelSplit(model, tuple(read_manifest(data_dir)["image_shape"]), worker)
        final = train_stage(net, cfg, "finetune", data_dir, own, rec, start)
        net.gather_branches()
        save_finetuned(model, blob, own, start, rec, final)
    finished.keep(own, start.digest, KEPT_OUTPUTS)
    return own / MODEL_FILE


def finetune_from_env(
    cfg: dict, data_dir: Path, source: Path, out_dir: Path, resume: bool, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Path:
    """``finetune_stage`` as one process of a torchrun / srun launch: joins the process group
    (on the config's device) and leaves it at the end."""
    worker = init_from_env(timeout_s, cfg["engine"]["device"])
    try:
        return finetune_stage(cfg, data_dir, source, out_dir, resume, worker)
    finally:
        dist.destroy_process_group()
