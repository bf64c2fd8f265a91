"""The pipeline stages: prepare-data -> train -> learn-groups -> split -> finetune -> evaluate.

Each stage reads only its declared inputs and its own config sections, and writes only its
declared outputs into its own directory (model file + ``run.json`` record; ``evaluate`` writes
``metrics.json``), so Snakemake and DVC can chain them.  Methods map onto the stages as:

============  ==============================  ============================  ===========
method        learn-groups                    split                         finetune
============  ==============================  ============================  ===========
baseline      (train)                         --                            --
splitnet      grouping from scratch           argmax (+overlap) partition   yes
random        --                              random balanced partition     yes
ssl           group lasso from the baseline   prune zeroed channels         yes
============  ==============================  ============================  ===========
"""

from __future__ import annotations


import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts, finished
from .assignment import GroupAssignments
from .class_similarity import balanced_spectral_groups, soft_confusion
from .augment import Normalizer
from .counting import count_model, reduction_pct
from .config import needs_baseline, stage_config
from .data import load_split, prepare_data, read_manifest
from .data.prepare import MANIFEST
from .engine import CHECKPOINT, DeviceData, EngineConfig, Schedule, checkpoint_digest, evaluate, resolve_device, train
from .fingerprint import stage_digest
from .io import atomic_torch_save, atomic_write_json, remove_stale_temp_files
from .metrics import class_group_table, throughput
from .model import WideResNet, parse_arch, wrn_plan
from .convergence import CONVERGED, SHARP, convergence_metrics, read_snapshots, steps_to_convergence
from .overlap import DEFAULT_THRESHOLD, update_freezing
from .partition import partition_from_assignments, random_partition
from .reduced_gradient import SimplexReducedGradient
from .regularizers import RegularizerConfig, split_losses, warmed_up
from .spec import SplitSpec
from .split import build_split_network
from .ssl import channels_to_keep, group_lasso_penalty, prune, zero_pruned_weights
from .topology import build_topology
from .records import RUN_RECORD, RunRecorder

MODEL_FILE = "model.pt"
SNAPSHOT_DIR = "assignments"
METRICS_FILE = "metrics.json"


class GroupingModel(nn.Module):
    """The dense network plus its assignment variables, so one state dict holds both."""

    def __init__(self, net: WideResNet, assignments: GroupAssignments) -> None:
        super().__init__()
        self.net = net
        self.assignments = assignments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # assignments enter only through the regularizers

    def after_load(self) -> None:
        self.assignments.apply_freeze()


# ----------------------------------------------------------------------------- helpers


def _engine(cfg: dict) -> tuple[EngineConfig, torch.device]:
    engine = EngineConfig(**cfg["engine"])
    if engine.threads:
        torch.set_num_threads(engine.threads)
    return engine, resolve_device(engine.device)


def _schedule(section: dict) -> Schedule:
    s = dict(section["schedule"])
    return Schedule(**{**s, "milestones": tuple(s.get("milestones", ()))})


def _plan_for(cfg: dict, data_dir: Path):
    manifest = read_manifest(data_dir)
    channels = manifest["image_shape"][0]
    depth, width = parse_arch(cfg["model"]["arch"])
    return wrn_plan(depth, width, channels, len(manifest["class_names"]))


def _data(data_dir: Path, split: str, device: torch.device) -> DeviceData:
    return DeviceData.from_split(load_split(data_dir, split), device)


def _normalizer(cfg: EngineConfig, train_data: DeviceData) -> Normalizer:
    return Normalizer(cfg.normalization, train_data.images if cfg.normalization == "dataset" else None).to(
        train_data.images.device
    )


def _run(model: nn.Module, cfg: dict, section: str, data_dir: Path, out_dir: Path, recorder: RunRecorder,
         start: StageStart, regularizer=None, extra_optimizers=(), after_step=None, end_of_epoch=None) -> dict:
    """Train with the shared engine, logging each epoch (with validation) to the run record."""
    engine, device = _engine(cfg)
    torch.manual_seed(engine.seed)
    train_data, val_data = _data(data_dir, "train", device), _data(data_dir, "val", device)
    normalizer = _normalizer(engine, train_data)
    model.to(device)
    if engine.channels_last:
        model.to(memory_format=torch.channels_last)

    def epoch_end(epoch: int) -> dict:
        row = {f"val_{k}": v for k, v in evaluate(model, val_data, normalizer, engine).items()}
        if end_of_epoch is not None:
            row.update(end_of_epoch(epoch))
        return row

    result = train(
        model, train_data, _schedule(cfg[section]), engine, out_dir, normalizer=normalizer,
        regularizer=regularizer, extra_optimizers=list(extra_optimizers), after_step=after_step, end_of_epoch=epoch_end,
        on_log=recorder.log, resume=start.resume, digest=start.digest,
    )
    if result.resumed_from is not None:
        # The record may lack the epochs before the checkpoint (e.g. Snakemake deleted it before
        # a retry): put them back from the checkpoint's history.
        recorder.truncate_after(0)
        for row in result.history:
            recorder.log(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
    last = result.history[-1] if result.history else {}
    return {k: v for k, v in last.items() if k != "epoch"}, result.history


@dataclass(frozen=True)
class StageStart:
    """How a stage starts: the digest of all its inputs, and what earlier work it may reuse."""

    digest: str
    resume: bool  # continue the checkpoint in the output directory
    restored: bool = False  # the finished outputs of identical inputs were put back: nothing to do


# What a finished stage keeps under its digest (see finished.py); SNAPSHOT_DIR only exists for grouping.
KEPT_OUTPUTS = [MODEL_FILE, RUN_RECORD, SNAPSHOT_DIR]
# group.class_init confusion: a class's logit in its confusion group starts this much higher
# (probability 0.73 for G = 2, 0.48 for G = 4): a head start the regularizers can still undo.
CLASS_INIT_LOGIT = 1.0


def _start(cfg: dict, stage: str, out_dir: Path, inputs: dict[str, Path | None], resume: bool) -> StageStart:
    """Clean up after killed writes, digest the stage's inputs, decide what may be reused.

    With ``resume``, a finished result of exactly these inputs (config sections, input file
    bytes, code) is restored, or else a checkpoint written from them is continued; any other
    checkpoint is ignored and replaced by the fresh run.
    """
    remove_stale_temp_files(out_dir)
    digest = stage_digest(stage_config(cfg, stage), inputs)
    if resume and finished.restore(out_dir, digest):
        print(f"{out_dir}: reusing the finished result of identical inputs (digest {digest[:12]})", flush=True)
        return StageStart(digest, resume=False, restored=True)
    found = checkpoint_digest(out_dir) if resume else None
    if found is not None and found != digest:
        print(f"{out_dir / CHECKPOINT} was made from other inputs (config, data, source model or code); "
              "starting fresh", flush=True)
    return StageStart(digest, resume=found == digest)


def _recorder(cfg: dict, stage: str, out_dir: Path, start: StageStart) -> RunRecorder:
    return RunRecorder(out_dir, cfg["experiment"], stage, cfg["scale"], stage_config(cfg, stage),
                       tags={"splitnet.inputs_digest": start.digest}, resume=start.resume)


def _manifest(data_dir: Path) -> Path:
    read_manifest(data_dir)  # a clear error if the data was never prepared
    return Path(data_dir) / MANIFEST


# ----------------------------------------------------------------------------- stages


def stage_prepare_data(cfg: dict, out_dir: Path) -> dict:
    return prepare_data(cfg["data"], out_dir)


def stage_train(cfg: dict, data_dir: Path, out_dir: Path, resume: bool = False) -> Path:
    """Baseline: train the dense WRN."""
    out_dir = Path(out_dir)
    start = _start(cfg, "train", out_dir, {"data": _manifest(data_dir)}, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with _recorder(cfg, "train", out_dir, start) as rec:
        engine, _ = _engine(cfg)
        torch.manual_seed(engine.seed)
        model = WideResNet(_plan_for(cfg, data_dir), bn_no_scale=cfg["model"]["bn_no_scale"])
        final, _ = _run(model, cfg, "train", data_dir, out_dir, rec, start)
        artifacts.save_dense(model, out_dir / MODEL_FILE, inputs_digest=start.digest)
        rec.finish(final, [out_dir / MODEL_FILE])
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE


def _dropout_kwargs(cfg: dict, spec: SplitSpec) -> dict:
    p = cfg["model"]["dropout"]
    stages = tuple(s for s in (2, 3) if spec.groups[s - 1] > 1)
    return {"dropout": p, "dropout_stages": stages, "dropout_fc": spec.groups[3] > 1}


def _confusion_groups(cfg: dict, data_dir: Path, baseline: Path, groups: int) -> list[int]:
    """Balanced spectral class groups of the baseline's soft confusions on the validation split."""
    engine, device = _engine(cfg)
    model = artifacts.build_model(artifacts.load_artifact(baseline)).to(device)
    train_data, val_data = _data(data_dir, "train", device), _data(data_dir, "val", device)
    images = _normalizer(engine, train_data)(val_data.images.float())
    confusion = soft_confusion(model, images, val_data.labels, len(read_manifest(data_dir)["class_names"]))
    return balanced_spectral_groups(confusion, groups)


def stage_learn_groups(cfg: dict, data_dir: Path, out_dir: Path, baseline: Path | None = None,
                       resume: bool = False) -> Path:
    """SplitNet grouping (from scratch), or SSL sparsification (from the baseline)."""
    out_dir = Path(out_dir)
    if cfg["method"] == "ssl":
        return _learn_ssl(cfg, data_dir, out_dir, baseline, resume)
    if cfg["method"] != "splitnet":
        raise ValueError(f"method {cfg['method']!r} has no learn-groups stage")
    g = cfg["group"]
    spec = SplitSpec.parse(g["split"])
    inputs = {"data": _manifest(data_dir)}
    if needs_baseline(cfg):
        if baseline is None:
            raise ValueError("group.init baseline / group.class_init confusion read the trained baseline: pass --baseline")
        inputs["baseline"] = baseline
    start = _start(cfg, "learn_groups", out_dir, inputs, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with _recorder(cfg, "learn_groups", out_dir, start) as rec:
        engine, _ = _engine(cfg)
        torch.manual_seed(engine.seed)
        plan = _plan_for(cfg, data_dir)
        net = WideResNet(plan, bn_no_scale=cfg["model"]["bn_no_scale"], **_dropout_kwargs(cfg, spec))
        if g["init"] == "baseline":
            # The trained weights, BN scales included: they stay frozen at the baseline's values
            # where bn_no_scale freezes them, so the network computes exactly the baseline's function.
            net.load_state_dict(artifacts.load_artifact(baseline)["state_dict"])
        topology = build_topology(plan, spec)
        assignments = GroupAssignments(topology, g["parametrisation"])
        if g["class_init"] == "confusion" and spec.groups[3] > 1:
            # start each class in its group of the baseline's confusions (class_similarity.py)
            assignments.favour("head_out", _confusion_groups(cfg, data_dir, baseline, spec.groups[3]), CLASS_INIT_LOGIT)
        model = GroupingModel(net, assignments)
        reg_cfg = RegularizerConfig(g["gamma_disjoint"], g["gamma_weight"], g["gamma_balance"], g["weighted"])

        def regularizer(step: int):
            step_cfg = warmed_up(reg_cfg, step, g["disjoint_warmup_steps"])
            losses = split_losses(net, topology, assignments.matrices(), step_cfg)
            return losses.total, {"reg_disjoint": losses.disjoint, "reg_weight": losses.weight,
                                  "reg_balance": losses.balance}

        extra = []
        # Assignments learn at lr x assignment_lr_scale (1 = the paper). Softmax logits at scale 1
        # stay in the weights' SGD (the paper's setting, unchanged); otherwise they get their own
        # SGD (same momentum, no weight decay) whose lr follows the same schedule.
        assignment_lr = g["schedule"]["lr"] * g["assignment_lr_scale"]
        momentum = g["schedule"].get("momentum", 0.9)
        if g["parametrisation"] == "simplex":
            extra.append(SimplexReducedGradient(list(assignments.values.values()), lr=assignment_lr,
                                                momentum=momentum, rule=g["simplex_rule"]))
        elif g["assignment_lr_scale"] != 1.0:
            extra.append(torch.optim.SGD(list(assignments.values.values()), lr=assignment_lr, momentum=momentum))
        overlap = g.get("overlap")
        fuzzy_threshold = overlap["threshold"] if overlap else DEFAULT_THRESHOLD
        steps_per_epoch = read_manifest(data_dir)["splits"]["train"]["count"] // engine.batch_size
        total_steps = g["schedule"]["epochs"] * steps_per_epoch

        def snapshot(step: int) -> None:
            # Every convergence_every steps: the overlap freeze check (in steps, not epochs: it
            # must catch the fuzzy nodes before the assignments sharpen, at every scale), then one
            # small file (resume-safe: a replayed step rewrites the same bytes) for the
            # convergence curve and Figure 1.
            if step % g["convergence_every"] and step != total_steps:
                return
            if overlap and step:
                update_freezing(assignments, overlap["threshold"], overlap["freeze_below"])
            with torch.no_grad():
                mats = {n: assignments.matrix(n).detach().float().cpu() for n in assignments.names}
            atomic_torch_save(mats, out_dir / SNAPSHOT_DIR / f"step_{step:07d}.pt")

        if not start.resume:  # snapshots of another run must not mix into this one's figure
            shutil.rmtree(out_dir / SNAPSHOT_DIR, ignore_errors=True)
            snapshot(0)  # the initial assignments

        def end_of_epoch(epoch: int) -> dict:
            with torch.no_grad():
                row = convergence_metrics({n: assignments.matrix(n) for n in assignments.names}, fuzzy_threshold)
            if overlap:
                row["frozen_assignments"] = float(assignments.frozen.sum())
            return row

        final, _ = _run(model, cfg, "group", data_dir, out_dir, rec, start, regularizer=regularizer,
                        extra_optimizers=extra, after_step=snapshot, end_of_epoch=end_of_epoch)
        with torch.no_grad():
            matrices = {name: assignments.matrix(name) for name in assignments.names}
        trace = [(step, convergence_metrics(mats, fuzzy_threshold)) for step, mats in read_snapshots(out_dir / SNAPSHOT_DIR)]
        steps = steps_to_convergence(trace)
        final.update({f"steps_to_convergence/{k}": float(v) for k, v in steps.items() if v is not None})
        convergence = {**convergence_metrics(matrices, fuzzy_threshold), "steps_to_convergence": steps,
                       "curve": [[step, row["assignment_converged"]] for step, row in trace]}
        artifacts.save_grouping(net, spec, matrices, out_dir / MODEL_FILE, inputs_digest=start.digest,
                                frozen=[n for n in assignments.names if assignments.is_frozen(n)],
                                convergence=convergence)
        rec.finish(final, [out_dir / MODEL_FILE])
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE


def _learn_ssl(cfg: dict, data_dir: Path, out_dir: Path, baseline: Path | None, resume: bool) -> Path:
    if baseline is None:
        raise ValueError("SSL starts from the trained baseline: pass --baseline")
    strength = cfg["ssl"]["strength"] * cfg["ssl"]["strength_scale"]
    start = _start(cfg, "learn_groups", out_dir, {"data": _manifest(data_dir), "baseline": baseline}, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with _recorder(cfg, "learn_groups", out_dir, start) as rec:
        model, _ = artifacts.load_model(baseline)

        def regularizer(step: int):
            penalty = group_lasso_penalty(model)
            return strength * penalty, {"reg_group_lasso": penalty}

        final, _ = _run(model, cfg, "ssl", data_dir, out_dir, rec, start, regularizer=regularizer)
        artifacts.save_dense(model, out_dir / MODEL_FILE, inputs_digest=start.digest)
        rec.finish(final, [out_dir / MODEL_FILE])
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE


def stage_split(cfg: dict, source: Path, out_dir: Path) -> Path:
    """Cut the network: learned (splitnet), random (random) or pruned (ssl)."""
    out_dir = Path(out_dir)
    s = cfg["split"]
    start = _start(cfg, "split", out_dir, {"source": source}, False)
    with _recorder(cfg, "split", out_dir, start) as rec:
        blob = artifacts.load_artifact(source)
        dense = artifacts.build_model(blob)
        metrics: dict[str, float] = {}
        extra: dict[str, Any] = {}
        if cfg["method"] == "ssl":
            kept = channels_to_keep(dense, cfg["ssl"]["prune_threshold"])
            zero_pruned_weights(dense, kept)
            small = prune(dense, kept)
            artifacts.save_dense(small, out_dir / MODEL_FILE, inputs_digest=start.digest)
            metrics["kept_channels"] = float(sum(len(k) for k in kept.streams[1:]) + sum(len(h) for hs in kept.hidden for h in hs))
        else:
            spec = SplitSpec.parse(cfg["group"]["split"])
            topology = build_topology(dense.plan, spec)
            if cfg["method"] == "random":
                partition = random_partition(topology, s["random_seed"])
            elif cfg["method"] == "splitnet":
                overlap = cfg["group"].get("overlap")
                partition, repairs = partition_from_assignments(
                    topology, blob["assignments"], overlap["threshold"] if overlap else None, s["empty_groups"])
                grouping = _grouping_state(blob, source, partition, bool(overlap))
                grouping["repaired_nodes"] = sum(repairs.values())
                extra["grouping"] = grouping
                metrics.update(_flat_numbers(grouping))
                if overlap:
                    metrics["unfrozen_variables"] = float(len(grouping["unfrozen_variables"]))
            else:
                raise ValueError(f"method {cfg['method']!r} has no split stage")
            model = build_split_network(topology, partition, s["convention"], s["layout"], dense=dense)
            artifacts.save_split(model, dense.plan, spec, partition, s["convention"], s["layout"], out_dir / MODEL_FILE,
                                 inputs_digest=start.digest, **extra)
        rec.finish(metrics, [out_dir / MODEL_FILE])
    return out_dir / MODEL_FILE


def _flat_numbers(node: dict, prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1.0}``: the numbers of a nested record, as run metrics."""
    flat: dict[str, float] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def _grouping_state(blob: dict, source: Path, partition: dict[str, torch.Tensor], overlap: bool) -> dict[str, Any]:
    """What the split says about the grouping it is cut from (kept in the split and finetuned
    model files, so ``evaluate`` reports it): convergence per variable, steps to convergence
    and, for overlap rows, the nodes copied into several branches and the variables that never
    froze. A grouping that did not converge is said out loud: its split follows the initial noise."""
    convergence = blob.get("convergence", {})
    names = sorted(blob["assignments"])
    frozen = set(blob.get("frozen", [])) if overlap else set()
    sharp = {n: float(convergence[f"sharp/{n}"]) for n in names if f"sharp/{n}" in convergence}
    state: dict[str, Any] = {
        # An overlap row's variable frozen by the paper's rule (< freeze_below fuzzy) has settled:
        # it no longer moves, and its fuzzy nodes are duplicated by design, so it counts as
        # converged; every other variable needs CONVERGED sharp columns. sharp/* stays literal.
        "assignment_converged": min((1.0 if n in frozen else v for n, v in sharp.items()), default=0.0),
        "sharp": sharp,
        "fuzzy": {n: float(convergence[f"fuzzy/{n}"]) for n in names if f"fuzzy/{n}" in convergence},
        "steps_to_convergence": dict(convergence.get("steps_to_convergence", {})),
    }
    converged = state["assignment_converged"]
    if converged < CONVERGED:
        print(f"WARNING: {source}: the grouping did not converge (only {100 * converged:.0f} % of the columns of its "
              f"least converged variable have a group probability > {SHARP}); splitting it anyway, marked "
              "assignment_converged in the record and tables. Train the grouping longer.", flush=True)
    if overlap:
        state["duplicated"] = {n: int((partition[n].sum(0) > 1).sum()) for n in names}  # nodes in > 1 branch
        never = sorted(set(names) - set(blob.get("frozen", [])))
        state["unfrozen_variables"] = never
        if never:
            print(f"WARNING: {source}: overlap variables never froze (fuzzy fraction stayed >= freeze_below): "
                  f"{', '.join(never)}", flush=True)
    return state


def stage_finetune(cfg: dict, data_dir: Path, source: Path, out_dir: Path, resume: bool = False) -> Path:
    out_dir = Path(out_dir)
    start = _start(cfg, "finetune", out_dir, {"data": _manifest(data_dir), "source": source}, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with _recorder(cfg, "finetune", out_dir, start) as rec:
        model, blob = artifacts.load_model(source)
        final, _ = _run(model, cfg, "finetune", data_dir, out_dir, rec, start)
        model.cpu()
        blob["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        blob["inputs_digest"] = start.digest
        artifacts.save_like(blob, out_dir / MODEL_FILE)
        rec.finish(final, [out_dir / MODEL_FILE])
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE


def stage_evaluate(cfg: dict, data_dir: Path, source: Path, out_dir: Path) -> dict[str, Any]:
    """Test error, params/FLOPs (and % reduced vs the unsplit WRN), class groups, throughput."""
    out_dir = Path(out_dir)
    start = _start(cfg, "evaluate", out_dir, {"data": _manifest(data_dir), "source": source}, False)
    with _recorder(cfg, "evaluate", out_dir, start) as rec:
        engine, device = _engine(cfg)
        model, blob = artifacts.load_model(source)
        model.to(device)
        if engine.channels_last:
            model.to(memory_format=torch.channels_last)
        test = _data(data_dir, "test", device)
        train_images = load_split(data_dir, "train")["images"] if engine.normalization == "dataset" else None
        normalizer = Normalizer(engine.normalization, train_images).to(device)
        result = evaluate(model, test, normalizer, engine)
        manifest = read_manifest(data_dir)
        shape = tuple(manifest["image_shape"])
        plan = artifacts.plan_from_dict(blob["plan"])
        dense_plan = wrn_plan(*parse_arch(cfg["model"]["arch"]), plan.in_channels, plan.num_classes)
        base = count_model(WideResNet(dense_plan).to(device), shape)
        count = count_model(model, shape)
        metrics: dict[str, Any] = {
            "experiment": cfg["experiment"], "scale": cfg["scale"], "method": cfg["method"],
            "dataset": manifest["source"], "arch": cfg["model"]["arch"], "input_shape": list(shape),
            "split": blob.get("split"), "test_error": result["error"], "test_loss": result["loss"],
            "test_images": len(test), "params": count.params, "flops": count.flops,
            "baseline_params": base.params, "baseline_flops": base.flops,
            "params_reduced_pct": reduction_pct(count.params, base.params),
            "flops_reduced_pct": reduction_pct(count.flops, base.flops),
            "stem": {"params": count.stem_params, "flops": count.stem_flops},
        }
        if blob["kind"] == "split":
            membership = blob["partition"].get("head_out")
            if membership is not None:
                metrics["groups"] = class_group_table(
                    membership, manifest["class_names"], manifest.get("superclass"), manifest.get("superclass_names"))
        if "grouping" in blob:
            metrics["grouping"] = blob["grouping"]
        ev = cfg["evaluate"]
        metrics["throughput"] = throughput(model, shape, ev["throughput_batch"], ev["throughput_repeats"], device,
                                           engine.channels_last)
        atomic_write_json(out_dir / METRICS_FILE, metrics)
        flat = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat["images_per_s"] = metrics["throughput"]["images_per_s"]
        flat.update(_flat_numbers(metrics.get("grouping", {})))  # convergence, next to the error in MLflow
        rec.finish(flat, [out_dir / METRICS_FILE])
    return metrics
