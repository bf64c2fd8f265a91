"""What every pipeline stage does around its own computation.

A stage (stages.py, grouping_stage.py, parallel/finetune.py) starts with :func:`start_stage`
(clean up after killed writes, digest its inputs, decide what earlier work it may reuse),
records its run with :func:`stage_recorder`, trains with :func:`train_stage` (the shared
engine plus validation each epoch) and keeps its finished outputs under their digest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import artifacts, finished
from .augment import Normalizer
from .config import stage_config
from .data import load_split, read_manifest
from .data.prepare import MANIFEST
from .engine import (
    CHECKPOINT,
    DeviceData,
    EngineConfig,
    Schedule,
    apply_backend_flags,
    backend_flags,
    checkpoint_digest,
    evaluate,
    resolve_device,
    train,
)
from .fingerprint import stage_digest
from .io import remove_stale_temp_files
from .model import WRNPlan, parse_arch, wrn_plan
from .records import RUN_RECORD, RunRecorder, check_recorded

MODEL_FILE = "model.pt"
SNAPSHOT_DIR = "assignments"  # the grouping's assignment snapshots (convergence curve, Figure 1)
# What a finished stage keeps under its digest (see finished.py); SNAPSHOT_DIR only exists for grouping.
KEPT_OUTPUTS = [MODEL_FILE, RUN_RECORD, SNAPSHOT_DIR]


@dataclass(frozen=True)
class StageStart:
    """How a stage starts: the digest of all its inputs, and what earlier work it may reuse."""

    digest: str
    resume: bool  # continue the checkpoint in the output directory
    restored: bool = False  # the finished outputs of identical inputs were put back: nothing to do


def start_stage(cfg: dict, stage: str, out_dir: Path, inputs: Mapping[str, Path | None], resume: bool) -> StageStart:
    """Clean up after killed writes, check and digest the stage's inputs, decide what may be reused.

    Every input file is checked against the sha256 its producer recorded (the run record beside
    it, ``records.check_recorded``) before anything is computed, and that hash enters the digest.
    With ``resume``, a finished result of exactly these inputs (config sections, input file
    bytes, code) is restored, or else a checkpoint written from them is continued; any other
    checkpoint is ignored and replaced by the fresh run.
    """
    remove_stale_temp_files(out_dir)
    digest = stage_digest(stage, stage_config(cfg, stage), {name: _input_sha256(path) for name, path in inputs.items()})
    if resume and finished.restore(out_dir, digest):
        print(f"{out_dir}: reusing the finished result of identical inputs (digest {digest[:12]})", flush=True)
        return StageStart(digest, resume=False, restored=True)
    found = checkpoint_digest(out_dir) if resume else None
    if found is not None and found != digest:
        print(
            f"{out_dir / CHECKPOINT} was made from other inputs (config, data, source model or code); starting fresh",
            flush=True,
        )
    return StageStart(digest, resume=found == digest)


def _input_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that produces it first")
    return check_recorded(Path(path))


def stage_recorder(cfg: dict, stage: str, out_dir: Path, start: StageStart) -> RunRecorder:
    return RunRecorder(
        out_dir,
        cfg["experiment"],
        stage,
        cfg["scale"],
        stage_config(cfg, stage),
        tags={"splitnet.inputs_digest": start.digest},
        resume=start.resume,
    )


def manifest_file(data_dir: Path) -> Path:
    """The prepared data's manifest (a stage input: it holds the sha256 of every split)."""
    read_manifest(data_dir)  # a clear error if the data was never prepared
    return Path(data_dir) / MANIFEST


def engine_config(cfg: dict) -> tuple[EngineConfig, torch.device]:
    """The engine settings of a resolved config; sets the torch threads and CUDA backend flags they ask for."""
    engine = EngineConfig(**cfg["engine"])
    if engine.threads:
        torch.set_num_threads(engine.threads)
    device = resolve_device(engine.device)
    apply_backend_flags(backend_flags(engine, device))
    return engine, device


def schedule_of(section: dict) -> Schedule:
    return Schedule(**{**section["schedule"], "milestones": tuple(section["schedule"]["milestones"])})


def dense_plan_for(cfg: dict, data_dir: Path) -> WRNPlan:
    """The unsplit WRN of the row's arch, shaped for the prepared data."""
    manifest = read_manifest(data_dir)
    depth, width = parse_arch(cfg["model"]["arch"])
    return wrn_plan(depth, width, manifest["image_shape"][0], len(manifest["class_names"]))


def device_data(data_dir: Path, split: str, device: torch.device) -> DeviceData:
    return DeviceData.from_split(load_split(data_dir, split), device)


def normalizer_for(cfg: EngineConfig, train_data: DeviceData) -> Normalizer:
    return Normalizer(cfg.normalization, train_data.images if cfg.normalization == "dataset" else None).to(
        train_data.images.device
    )


def train_stage(
    model: nn.Module,
    cfg: dict,
    section: str,
    data_dir: Path,
    out_dir: Path,
    recorder: RunRecorder,
    start: StageStart,
    regularizer: Callable | None = None,
    extra_optimizers: Sequence = (),
    after_step: Callable[[int], None] | None = None,
    end_of_epoch: Callable[[int], dict] | None = None,
) -> dict[str, float]:
    """Train with the shared engine, logging each epoch (with validation) to the run record;
    returns the last epoch's metrics."""
    engine, device = engine_config(cfg)
    torch.manual_seed(engine.seed)
    train_data, val_data = device_data(data_dir, "train", device), device_data(data_dir, "val", device)
    normalizer = normalizer_for(engine, train_data)
    model.to(device)
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)

    def epoch_end(epoch: int) -> dict:
        row = {f"val_{k}": v for k, v in evaluate(model, val_data, normalizer, engine).items()}
        if end_of_epoch is not None:
            row.update(end_of_epoch(epoch))
        return row

    result = train(
        model,
        train_data,
        schedule_of(cfg[section]),
        engine,
        out_dir,
        normalizer=normalizer,
        regularizer=regularizer,
        extra_optimizers=list(extra_optimizers),
        after_step=after_step,
        end_of_epoch=epoch_end,
        on_log=recorder.log,
        resume=start.resume,
        digest=start.digest,
    )
    if result.resumed_from is not None:
        # The record may lack the epochs before the checkpoint (e.g. Snakemake deleted it before
        # a retry): put them back from the checkpoint's history.
        recorder.truncate_after(0)
        for row in result.history:
            recorder.log(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
    last = result.history[-1] if result.history else {}
    return {k: v for k, v in last.items() if k != "epoch"}


def save_finetuned(
    model: nn.Module, blob: dict, out_dir: Path, start: StageStart, recorder: RunRecorder, final: dict[str, float]
) -> Path:
    """The finetuned weights in the source model's file format, the finished record, and the
    result kept under its digest."""
    model.cpu()
    blob["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob["inputs_digest"] = start.digest
    artifacts.save_like(blob, out_dir / MODEL_FILE)
    recorder.finish(final, [out_dir / MODEL_FILE])
    return out_dir / MODEL_FILE
