"""The learn-groups stage: SplitNet's grouping, or SSL's sparsification.

SplitNet (``method: splitnet``) trains the dense network together with the group assignment
variables under the three group regularizers (regularizers.py), from scratch as the paper does
or from the trained baseline (``group.init``), and saves the network with its assignment
matrices and their convergence record; ``split`` then cuts it. SSL (``method: ssl``) trains the
baseline under the group lasso; ``split`` then prunes the zeroed channels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from . import artifacts, finished
from .assignment import GroupAssignments
from .class_similarity import balanced_spectral_groups, soft_confusion
from .config import needs_baseline
from .convergence import convergence_metrics, steps_to_convergence
from .data import read_manifest
from .io import atomic_torch_save
from .model import WideResNet
from .overlap import DEFAULT_THRESHOLD, update_freezing
from .reduced_gradient import SimplexReducedGradient
from .regularizers import RegularizerConfig, combine, split_terms, warmed_up
from .spec import SplitSpec
from .ssl import group_lasso_penalty
from .stage_run import (
    KEPT_OUTPUTS,
    MODEL_FILE,
    SNAPSHOT_DIR,
    dense_plan_for,
    device_data,
    engine_config,
    manifest_file,
    normalizer_for,
    stage_recorder,
    start_stage,
    train_stage,
)
from .topology import build_topology

# group.class_init confusion: a class's logit in its confusion group starts this much higher
# (probability 0.73 for G = 2, 0.48 for G = 4): a head start the regularizers can still undo.
CLASS_INIT_LOGIT = 1.0


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


def dropout_kwargs(cfg: dict, spec: SplitSpec) -> dict:
    """Dropout only in the stages (and fc) that are split, as group.sh does."""
    p = cfg["model"]["dropout"]
    stages = tuple(s for s in (2, 3) if spec.groups[s - 1] > 1)
    return {"dropout": p, "dropout_stages": stages, "dropout_fc": spec.groups[3] > 1}


def confusion_groups(cfg: dict, data_dir: Path, baseline: Path, groups: int) -> list[int]:
    """Balanced spectral class groups of the baseline's soft confusions on the validation split."""
    engine, device = engine_config(cfg)
    model = artifacts.build_model(artifacts.load_artifact(baseline)).to(device)
    train_data, val_data = device_data(data_dir, "train", device), device_data(data_dir, "val", device)
    images = normalizer_for(engine, train_data)(val_data.images.float())
    confusion = soft_confusion(model, images, val_data.labels, len(read_manifest(data_dir)["class_names"]))
    return balanced_spectral_groups(confusion, groups)


def stage_learn_groups(
    cfg: dict, data_dir: Path, out_dir: Path, baseline: Path | None = None, resume: bool = False
) -> Path:
    """SplitNet grouping (from scratch), or SSL sparsification (from the baseline)."""
    out_dir = Path(out_dir)
    if cfg["method"] == "ssl":
        return _learn_ssl(cfg, data_dir, out_dir, baseline, resume)
    if cfg["method"] != "splitnet":
        raise ValueError(f"method {cfg['method']!r} has no learn-groups stage")
    g = cfg["group"]
    spec = SplitSpec.parse(g["split"])
    inputs = {"data": manifest_file(data_dir)}
    if needs_baseline(cfg):
        if baseline is None:
            raise ValueError(
                "group.init baseline / group.class_init confusion read the trained baseline: pass --baseline"
            )
        inputs["baseline"] = baseline
    else:
        baseline = None  # not an input of this row: never read
    start = start_stage(cfg, "learn_groups", out_dir, inputs, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with stage_recorder(cfg, "learn_groups", out_dir, start) as rec:
        engine, _ = engine_config(cfg)
        torch.manual_seed(engine.seed)
        plan = dense_plan_for(cfg, data_dir)
        net = WideResNet(plan, bn_no_scale=cfg["model"]["bn_no_scale"], **dropout_kwargs(cfg, spec))
        if g["init"] == "baseline":
            # The trained weights, BN scales included: they stay frozen at the baseline's values
            # where bn_no_scale freezes them, so the network computes exactly the baseline's function.
            assert baseline is not None  # needs_baseline
            net.load_state_dict(artifacts.load_artifact(baseline)["state_dict"])
        topology = build_topology(plan, spec)
        assignments = GroupAssignments(topology, g["parametrisation"])
        if g["class_init"] == "confusion" and spec.groups[3] > 1:
            # start each class in its group of the baseline's confusions (class_similarity.py)
            assert baseline is not None  # needs_baseline
            assignments.favour("head_out", confusion_groups(cfg, data_dir, baseline, spec.groups[3]), CLASS_INIT_LOGIT)
        model = GroupingModel(net, assignments)
        reg_cfg = RegularizerConfig.from_group(g)

        def terms() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return split_terms(net, topology, assignments.matrices(), reg_cfg.weighted)

        # compiled, the regularisers launch a few fused kernels instead of ~600-1,000 small ops
        # (benchmarks/step_ops.py); the gammas (and R_D's warm-up ramp) are applied outside
        regularizer_terms = torch.compile(terms) if engine.compile else terms

        def regularizer(step: int):
            losses = combine(regularizer_terms(), warmed_up(reg_cfg, step, g["disjoint_warmup_steps"]))
            return losses.total, {
                "reg_disjoint": losses.disjoint,
                "reg_weight": losses.weight,
                "reg_balance": losses.balance,
            }

        extra: list[torch.optim.Optimizer] = []
        # Assignments learn at lr x assignment_lr_scale (1 = the paper). Softmax logits at scale 1
        # stay in the weights' SGD (the paper's setting, unchanged); otherwise they get their own
        # SGD (same momentum, no weight decay) whose lr follows the same schedule.
        assignment_lr = g["schedule"]["lr"] * g["assignment_lr_scale"]
        momentum = g["schedule"]["momentum"]
        if g["parametrisation"] == "simplex":
            extra.append(
                SimplexReducedGradient(
                    list(assignments.values.values()), lr=assignment_lr, momentum=momentum, rule=g["simplex_rule"]
                )
            )
        elif g["assignment_lr_scale"] != 1.0:
            extra.append(torch.optim.SGD(list(assignments.values.values()), lr=assignment_lr, momentum=momentum))
        overlap = g["overlap"]
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

        final = train_stage(
            model,
            cfg,
            "group",
            data_dir,
            out_dir,
            rec,
            start,
            regularizer=regularizer,
            extra_optimizers=extra,
            after_step=snapshot,
            end_of_epoch=end_of_epoch,
        )
        with torch.no_grad():
            matrices = {name: assignments.matrix(name) for name in assignments.names}
        trace = [
            (step, convergence_metrics(mats, fuzzy_threshold))
            for step, mats in artifacts.read_snapshots(out_dir / SNAPSHOT_DIR)
        ]
        steps = steps_to_convergence(trace)
        final.update({f"steps_to_convergence/{k}": float(v) for k, v in steps.items() if v is not None})
        convergence = {
            **convergence_metrics(matrices, fuzzy_threshold),
            "steps_to_convergence": steps,
            "curve": [[step, row["assignment_converged"]] for step, row in trace],
        }
        artifacts.save_grouping(
            net,
            spec,
            matrices,
            out_dir / MODEL_FILE,
            inputs_digest=start.digest,
            frozen=[n for n in assignments.names if assignments.is_frozen(n)],
            convergence=convergence,
        )
        rec.finish(final, [out_dir / MODEL_FILE], outputs=sorted((out_dir / SNAPSHOT_DIR).glob("step_*.pt")))
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE


def _learn_ssl(cfg: dict, data_dir: Path, out_dir: Path, baseline: Path | None, resume: bool) -> Path:
    if baseline is None:
        raise ValueError("SSL starts from the trained baseline: pass --baseline")
    strength = cfg["ssl"]["strength"] * cfg["ssl"]["strength_scale"]
    start = start_stage(cfg, "learn_groups", out_dir, {"data": manifest_file(data_dir), "baseline": baseline}, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with stage_recorder(cfg, "learn_groups", out_dir, start) as rec:
        model, _ = artifacts.load_model(baseline)
        assert isinstance(model, WideResNet)  # validate.check_stage: --baseline is a dense model

        def regularizer(step: int):
            penalty = group_lasso_penalty(model)
            return strength * penalty, {"reg_group_lasso": penalty}

        final = train_stage(model, cfg, "ssl", data_dir, out_dir, rec, start, regularizer=regularizer)
        artifacts.save_dense(model, out_dir / MODEL_FILE, inputs_digest=start.digest)
        rec.finish(final, [out_dir / MODEL_FILE])
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE
