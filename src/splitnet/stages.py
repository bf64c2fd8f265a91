"""The pipeline stages: prepare-data -> train -> learn-groups -> split -> finetune -> evaluate.

Each stage reads only its declared inputs and its own config sections, and writes only its
declared outputs into its own directory (model file + ``run.json`` record; ``evaluate`` writes
``metrics.json``), so Snakemake and DVC can chain them. What every stage does around its own
computation (input digest, reuse, run record, training) is in ``stage_run.py``; learn-groups is in
``grouping_stage.py``. Methods map onto the stages as (``config.METHOD_STAGES``):

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

from pathlib import Path
from typing import Any

import torch

from . import artifacts, finished
from .augment import Normalizer
from .convergence import CONVERGED, SHARP
from .counting import count_model, reduction_pct
from .data import load_split, prepare_data, read_manifest
from .engine import evaluate
from .grouping_stage import stage_learn_groups
from .io import atomic_write_json
from .metrics import class_group_table, throughput
from .model import WideResNet, parse_arch, wrn_plan
from .partition import partition_from_assignments, random_partition
from .spec import SplitSpec
from .split import build_split_network
from .ssl import channels_to_keep, prune, zero_pruned_weights
from .stage_run import (
    KEPT_OUTPUTS,
    MODEL_FILE,
    dense_plan_for,
    device_data,
    engine_config,
    manifest_file,
    save_finetuned,
    stage_recorder,
    start_stage,
    train_stage,
)
from .topology import build_topology

__all__ = ["stage_evaluate", "stage_finetune", "stage_learn_groups", "stage_prepare_data", "stage_split", "stage_train"]
METRICS_FILE = "metrics.json"


def stage_prepare_data(cfg: dict, out_dir: Path) -> dict:
    return prepare_data(cfg["data"], out_dir)


def stage_train(cfg: dict, data_dir: Path, out_dir: Path, resume: bool = False) -> Path:
    """Baseline: train the dense WRN."""
    out_dir = Path(out_dir)
    start = start_stage(cfg, "train", out_dir, {"data": manifest_file(data_dir)}, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with stage_recorder(cfg, "train", out_dir, start) as rec:
        engine, _ = engine_config(cfg)
        torch.manual_seed(engine.seed)
        model = WideResNet(dense_plan_for(cfg, data_dir), bn_no_scale=cfg["model"]["bn_no_scale"])
        final = train_stage(model, cfg, "train", data_dir, out_dir, rec, start)
        artifacts.save_dense(model, out_dir / MODEL_FILE, inputs_digest=start.digest)
        rec.finish(final, [out_dir / MODEL_FILE])
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE


def stage_split(cfg: dict, source: Path, out_dir: Path) -> Path:
    """Cut the network: learned (splitnet), random (random) or pruned (ssl)."""
    out_dir = Path(out_dir)
    s = cfg["split"]
    start = start_stage(cfg, "split", out_dir, {"source": source}, False)
    with stage_recorder(cfg, "split", out_dir, start) as rec:
        blob = artifacts.load_artifact(source)
        dense = artifacts.build_model(blob)
        assert isinstance(dense, WideResNet)  # validate.check_stage: split reads a dense or grouping model
        metrics: dict[str, float] = {}
        extra: dict[str, Any] = {}
        if cfg["method"] == "ssl":
            kept = channels_to_keep(dense, cfg["ssl"]["prune_threshold"])
            zero_pruned_weights(dense, kept)
            small = prune(dense, kept)
            artifacts.save_dense(small, out_dir / MODEL_FILE, inputs_digest=start.digest)
            metrics["kept_channels"] = float(
                sum(len(k) for k in kept.streams[1:]) + sum(len(h) for hs in kept.hidden for h in hs)
            )
        else:
            spec = SplitSpec.parse(cfg["group"]["split"])
            topology = build_topology(dense.plan, spec)
            if cfg["method"] == "random":
                partition = random_partition(topology, s["random_seed"])
            elif cfg["method"] == "splitnet":
                overlap = cfg["group"]["overlap"]
                partition, repairs = partition_from_assignments(
                    topology, blob["assignments"], overlap["threshold"] if overlap else None, s["empty_groups"]
                )
                grouping = _grouping_state(blob, source, partition, bool(overlap))
                grouping["repaired_nodes"] = sum(repairs.values())
                extra["grouping"] = grouping
                metrics.update(_flat_numbers(grouping))
                if overlap:
                    metrics["unfrozen_variables"] = float(len(grouping["unfrozen_variables"]))
            else:
                raise ValueError(f"method {cfg['method']!r} has no split stage")
            model = build_split_network(topology, partition, s["convention"], s["layout"], dense=dense)
            artifacts.save_split(
                model,
                dense.plan,
                spec,
                partition,
                s["convention"],
                s["layout"],
                out_dir / MODEL_FILE,
                inputs_digest=start.digest,
                **extra,
            )
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
        print(
            f"WARNING: {source}: the grouping did not converge (only {100 * converged:.0f} % of the columns of its "
            f"least converged variable have a group probability > {SHARP}); splitting it anyway, marked "
            "assignment_converged in the record and tables. Train the grouping longer.",
            flush=True,
        )
    if overlap:
        state["duplicated"] = {n: int((partition[n].sum(0) > 1).sum()) for n in names}  # nodes in > 1 branch
        never = sorted(set(names) - set(blob.get("frozen", [])))
        state["unfrozen_variables"] = never
        if never:
            print(
                f"WARNING: {source}: overlap variables never froze (fuzzy fraction stayed >= freeze_below): "
                f"{', '.join(never)}",
                flush=True,
            )
    return state


def stage_finetune(cfg: dict, data_dir: Path, source: Path, out_dir: Path, resume: bool = False) -> Path:
    out_dir = Path(out_dir)
    start = start_stage(cfg, "finetune", out_dir, {"data": manifest_file(data_dir), "source": source}, resume)
    if start.restored:
        return out_dir / MODEL_FILE
    with stage_recorder(cfg, "finetune", out_dir, start) as rec:
        model, blob = artifacts.load_model(source)
        final = train_stage(model, cfg, "finetune", data_dir, out_dir, rec, start)
        save_finetuned(model, blob, out_dir, start, rec, final)
    finished.keep(out_dir, start.digest, KEPT_OUTPUTS)
    return out_dir / MODEL_FILE


def stage_evaluate(cfg: dict, data_dir: Path, source: Path, out_dir: Path) -> dict[str, Any]:
    """Test error, params/FLOPs (and % reduced vs the unsplit WRN), class groups, throughput."""
    out_dir = Path(out_dir)
    start = start_stage(cfg, "evaluate", out_dir, {"data": manifest_file(data_dir), "source": source}, False)
    with stage_recorder(cfg, "evaluate", out_dir, start) as rec:
        engine, device = engine_config(cfg)
        model, blob = artifacts.load_model(source)
        model.to(device)
        if engine.channels_last:
            model.to(memory_format=torch.channels_last)
        test = device_data(data_dir, "test", device)
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
            "experiment": cfg["experiment"],
            "scale": cfg["scale"],
            "method": cfg["method"],
            "dataset": manifest["source"],
            "arch": cfg["model"]["arch"],
            "input_shape": list(shape),
            "split": blob.get("split"),
            "test_error": result["error"],
            "test_loss": result["loss"],
            "test_images": len(test),
            "params": count.params,
            "flops": count.flops,
            "baseline_params": base.params,
            "baseline_flops": base.flops,
            "params_reduced_pct": reduction_pct(count.params, base.params),
            "flops_reduced_pct": reduction_pct(count.flops, base.flops),
            "stem": {"params": count.stem_params, "flops": count.stem_flops},
        }
        if blob["kind"] == "split":
            membership = blob["partition"].get("head_out")
            if membership is not None:
                metrics["groups"] = class_group_table(
                    membership, manifest["class_names"], manifest.get("superclass"), manifest.get("superclass_names")
                )
        if "grouping" in blob:
            metrics["grouping"] = blob["grouping"]
        ev = cfg["evaluate"]
        metrics["throughput"] = throughput(
            model, shape, ev["throughput_batch"], ev["throughput_repeats"], device, engine.channels_last
        )
        atomic_write_json(out_dir / METRICS_FILE, metrics)
        flat = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        flat["images_per_s"] = metrics["throughput"]["images_per_s"]
        flat.update(_flat_numbers(metrics.get("grouping", {})))  # convergence, next to the error in MLflow
        rec.finish(flat, [out_dir / METRICS_FILE])
    return metrics
