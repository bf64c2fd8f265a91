"""Checks of a command's inputs, run before any compute and before any output is touched.

Each check raises :class:`InputError` with one line that names the argument, file or params key
at fault, says what is wrong and what to do.  ``cli.main`` prints it as
``splitnet <command>: error: <message>`` and exits with code 2.

A stage needs the right *kind* of model file (``artifacts``: ``dense``, ``grouping``, ``split``)
from the stage before it:

============  =================  =====================  =================  ===========================
method        learn-groups       split                  finetune           evaluate
============  =================  =====================  =================  ===========================
baseline      --                 --                     --                 dense (train)
splitnet      (no model)         grouping               split              split (finetune)
random        --                 dense (baseline)       split              split (finetune)
ssl           dense (baseline)   dense (learn-groups)   dense (pruned)     dense (finetune)
============  =================  =====================  =================  ===========================
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

from . import artifacts
from .config import (
    EXPERIMENTS_FILE,
    METHOD_STAGES,
    SCALES_FILE,
    SPLIT_METHODS,
    TRAINING_STAGES,
    ConfigError,
    command_name,
    key_location,
    load_registry,
    needs_baseline,
    read_yaml,
    split_experiment,
)
from .data import DataError, parse_config, read_manifest
from .data.prepare import MANIFEST
from .io import path_problem, sha256_file
from .model import WRNPlan, parse_arch, wrn_plan
from .outputs import ScaleOutputs, table_runs
from .source_checks import SOURCE_RULES, InputError, SourceRule, check_source_matches, load_source
from .spec import SplitSpec
from .topology import build_topology, stage_in, stage_out

DEVICE_TYPES = ("cpu", "cuda", "mps")


# ----------------------------------------------------------------------------- names and paths


def check_names(registry: dict, params_dir: Path, experiment: str, scale: str) -> None:
    """``--experiment`` and ``--scale`` must name a row and a scale of the params files."""
    try:
        split_experiment(registry, experiment)
    except ConfigError as err:
        raise InputError(f"--experiment {experiment!r}: {err} (in {params_dir / EXPERIMENTS_FILE})") from None
    if scale not in registry["scales"]:
        raise InputError(
            f"--scale {scale!r} is not a scale of {params_dir / SCALES_FILE}; "
            f"pick one of: {', '.join(registry['scales'])}"
        )


def _exists(path: Path, flag: str) -> bool:
    """Whether ``path`` exists; a symlink loop, a file on the way, a dangling symlink or a denied
    permission is an error that says so (``Path.exists`` reads them all as missing)."""
    problem = path_problem(path)
    if problem is not None:
        raise InputError(f"{flag} {path}: {problem}")
    return path.exists()


def check_writable_dir(path: Path, flag: str) -> None:
    """``path`` is a writable directory, or can be created as one."""
    if _exists(path, flag) and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a directory; pass a directory path (it is created if missing)")
    existing = path
    while not _exists(existing, flag):  # the nearest ancestor that exists decides whether mkdir can work
        existing = existing.parent
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise InputError(
            f"{flag} {path}: {existing} is not writable: read-only file system; pass a directory on a writable one"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"{flag} {path}: {existing} is not writable: permission denied; pass a directory you can write to"
        )


def check_writable_file(path: Path, flag: str) -> None:
    """``path`` can be written as a file (its directory is created if missing)."""
    if _exists(path, flag) and path.is_dir():
        raise InputError(f"{flag} {path} is a directory; pass a file path")
    check_writable_dir(path.parent, f"{flag} {path}:")


def check_input_dir(path: Path, flag: str, what_to_do: str) -> None:
    if not _exists(path, flag):
        raise InputError(f"{flag} {path} does not exist; {what_to_do}")
    if not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a directory; {what_to_do}")


# ----------------------------------------------------------------------------- config values


def check_device(name: str, where: str) -> None:
    """The engine's device exists here (``auto`` always does)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"{where}: {name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type not in DEVICE_TYPES:
        raise InputError(f"{where}: device type {device.type!r} is not supported; use auto, cpu, cuda or cuda:<index>")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"{where}: {name!r} asks for a GPU but CUDA is not available here (no GPU, or a "
                "CPU-only torch); set it to cpu or auto, or run on a GPU node"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"{where}: {name!r} but this machine has {torch.cuda.device_count()} GPU(s); "
                "use cuda or a smaller index"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{where}: {name!r} but MPS is not available here; set it to cpu or auto")


def dense_plan(arch: str, in_channels: int, num_classes: int, where: str) -> WRNPlan:
    """The plan of ``arch`` (e.g. wrn-16-8); ``where`` names the setting that gave it."""
    try:
        return wrn_plan(*parse_arch(arch), in_channels, num_classes)
    except ValueError as err:
        raise InputError(f"{where}: {err}") from None


def _vector_text(name: str) -> str:
    """Which layer's channels an assignment vector covers, for messages."""
    if name == "head_in":
        return "the fc's input (stage 3's width)"
    stage = int(name[len("stage")])
    if name == stage_in(stage):
        return f"the input of stage {stage} (stage {stage - 1}'s width)"
    if name == stage_out(stage):
        return f"the width of stage {stage}"
    return f"each hidden layer of stage {stage}"


def check_split_fits(spec: SplitSpec, plan: WRNPlan, where: str, arch: str) -> None:
    """Every split segment has at least as many nodes as groups in each vector it cuts.

    A stage split into G groups cuts its input channels, its hidden channels and its width into
    G parts each; the fc split into G groups cuts its input features and the classes.
    """
    for vector in build_topology(plan, spec).vectors.values():
        if vector.groups <= vector.size:
            continue
        if vector.name == "head_out":
            raise InputError(
                f"{where}: {spec.code} splits the fc into {vector.groups} groups, but there are only "
                f"{vector.size} classes; use at most {vector.size} fc groups (the last number)"
            )
        segment = "the fc" if vector.name == "head_in" else f"stage {vector.name[len('stage')]}"
        raise InputError(
            f"{where}: {spec.code} splits {segment} into {vector.groups} groups, but "
            f"{_vector_text(vector.name)} of {arch} has only {vector.size} channels; use at most "
            f"{vector.size} groups there, or a wider arch"
        )


# ----------------------------------------------------------------------------- prepared data


def check_prepared_data(data_dir: Path, splits: tuple[str, ...]) -> dict[str, Any]:
    """The manifest of a prepared directory, after checking that ``splits`` are intact."""
    rerun = "re-run `splitnet prepare-data`"
    check_input_dir(data_dir, "--data", f"run `splitnet prepare-data --out {data_dir}` first")
    manifest = read_manifest(data_dir)
    where = data_dir / MANIFEST
    names, shape, entries = manifest.get("class_names"), manifest.get("image_shape"), manifest.get("splits")
    if not (
        isinstance(names, list)
        and names
        and isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) and v > 0 for v in shape)
        and isinstance(entries, dict)
    ):
        raise InputError(f"{where} is malformed (class_names, image_shape or splits); {rerun}")
    for split in splits:
        entry = entries.get(split)
        if not isinstance(entry, dict) or not {"file", "sha256", "count"} <= entry.keys():
            raise InputError(f"{where} has no complete entry for the {split} split; {rerun}")
        path = data_dir / entry["file"]
        if not path.is_file():
            raise InputError(f"{path} is missing; {rerun}")
        if sha256_file(path) != entry["sha256"]:
            raise InputError(f"{path} does not match its manifest (sha256): it was modified after preparation; {rerun}")
    return manifest


# ----------------------------------------------------------------------------- stages


def check_stage(args: argparse.Namespace, registry: dict, cfg: dict) -> None:
    """Everything a stage command reads, checked before it starts.

    ``args`` are the parsed stage arguments, ``cfg`` the resolved config of ``--experiment`` at
    ``--scale`` (``config.resolve``).
    """
    command, method = args.command, cfg["method"]
    experiment, scale = cfg["experiment"], cfg["scale"]
    params_dir = Path(args.params_dir)

    def where(key: str) -> str:
        return key_location(registry, params_dir, experiment, scale, key)

    def commands(method: str) -> list[str]:  # prepare-data belongs to every row
        return [command_name(stage) for stage in ("prepare_data", *METHOD_STAGES[method])]

    if command not in commands(method):
        rows = ", ".join(r for r, row in registry["experiments"].items() if command in commands(row["method"]))
        raise InputError(
            f"--experiment {experiment!r} is a {method} row, which has no {command} stage "
            f"(its stages: {', '.join(commands(method))}); rows with one: {rows}"
        )
    check_writable_dir(Path(args.out), "--out")
    if command == "prepare-data":
        _check_data_settings(cfg["data"], where("data"))
        return
    if command != "split":  # split runs on the CPU without the engine
        check_device(cfg["engine"]["device"], where("engine.device"))
    if method in SPLIT_METHODS:
        spec = SplitSpec.parse(cfg["group"]["split"])  # load_registry checked that it parses

    manifest, data_dir = None, None
    if command != "split":
        data_dir = Path(args.data)
        splits: tuple[str, ...] = ("test",) if command == "evaluate" else ("train", "val")
        if command == "evaluate" and cfg["engine"]["normalization"] == "dataset":
            splits += ("train",)  # the normalisation statistics come from the training images
        manifest = check_prepared_data(data_dir, splits)
    if command in map(command_name, TRAINING_STAGES):
        assert manifest is not None  # read above for every command but split
        count = manifest["splits"]["train"]["count"]
        batch = cfg["engine"]["batch_size"]
        if batch > count:
            raise InputError(
                f"{where('engine.batch_size')}: {batch} exceeds the {count} training images in "
                f"{data_dir}; lower it (or prepare more data)"
            )

    arch = cfg["model"]["arch"]
    if manifest is not None:
        plan = dense_plan(arch, manifest["image_shape"][0], len(manifest["class_names"]), where("model.arch"))
        if command == "learn-groups" and method == "splitnet":
            check_split_fits(spec, plan, where("group.split"), arch)

    if command == "learn-groups":
        flag, path = "--baseline", args.baseline
    else:
        flag, path = "--source", getattr(args, "source", None)
    rule = SOURCE_RULES.get((command, method))
    if command == "learn-groups" and method == "splitnet":
        if needs_baseline(cfg):
            rule = SourceRule(
                "dense", "the baseline row's train/model.pt (group.init baseline or class_init confusion)"
            )
        elif path is not None:
            raise InputError(
                f"--baseline is only read by SSL rows and groupings with group.init baseline or "
                f"class_init confusion; row {experiment!r} reads no baseline: drop --baseline"
            )
    if rule is None:
        return
    context = f"{command} of row {experiment!r} (method {method})"
    if path is None:
        raise InputError(f"{flag} is required: {context} starts from {rule.written_by}; pass it")
    blob = load_source(Path(path), flag, rule, context)
    check_source_matches(blob, Path(path), flag, cfg, where("model.arch"), manifest, data_dir)
    if command == "split" and method in SPLIT_METHODS:
        plan = artifacts.plan_from_dict(blob["plan"])
        check_split_fits(spec, plan, where("group.split"), arch)
        if method == "splitnet" and cfg["split"]["empty_groups"] == "error":
            _check_no_empty_group(blob, spec, plan, cfg["group"]["overlap"], Path(path), where("split.empty_groups"))


def _check_no_empty_group(
    blob: dict, spec: SplitSpec, plan: WRNPlan, overlap: dict | None, path: Path, where: str
) -> None:
    """With ``empty_groups: error``, the cut the split stage would make, done here first (cheap)."""
    from .partition import EmptyGroupError, partition_from_assignments

    try:
        partition_from_assignments(
            build_topology(plan, spec), blob["assignments"], overlap["threshold"] if overlap else None, "error"
        )
    except EmptyGroupError as err:
        raise InputError(f"--source {path}: {err} ({where} is error)") from None


def _check_data_settings(data_cfg: dict, where: str) -> None:
    """The ``data`` section parses, and its raw data root exists unless it may be downloaded."""
    try:
        settings = parse_config(data_cfg)
    except DataError as err:
        message = str(err)
        # parse_config names keys as "data.<key>"; prefix the file and scale it lives in
        raise InputError(
            f"{where.rsplit('.data', 1)[0]}.{message}" if message.startswith("data") else f"{where}: {message}"
        ) from None
    # the root of planted data is written here, that of downloaded data may be created
    if not settings.download and settings.source != "planted" and not _exists(settings.root, f"{where}.root:"):
        raise InputError(
            f"{where}.root: {settings.root} does not exist; point it at the raw {settings.source} "
            "files, or set download: true"
        )


# ----------------------------------------------------------------------------- other commands


def check_summary(args: argparse.Namespace) -> None:
    """``splitnet summary``: sizes are positive and the arch is a WRN."""
    for flag, value in (
        ("--in-channels", args.in_channels),
        ("--num-classes", args.num_classes),
        ("--image-size", args.image_size),
    ):
        if value < 1:
            raise InputError(f"{flag} {value}: must be at least 1")
    if args.split is not None:
        dense_plan(args.arch, args.in_channels, args.num_classes, f"--arch {args.arch}")


def check_results_command(args: argparse.Namespace) -> None:
    """``tables``, ``figures``, ``study``, ``track``: the results directory exists and (but for
    ``track``, whose MLflow store may be elsewhere) can be written; the scale is known; ``tables``:
    every run it reads has finished, unless ``--partial``."""
    results = Path(args.results)
    check_input_dir(results, "--results", "run the pipeline first (snakemake) or pass the results directory")
    params_dir = getattr(args, "params_dir", None)
    if params_dir is not None:
        registry = load_registry(params_dir)
        if args.scale not in registry["scales"]:
            raise InputError(
                f"--scale {args.scale!r} is not a scale of {Path(params_dir) / SCALES_FILE}; "
                f"pick one of: {', '.join(registry['scales'])}"
            )
        if args.command == "tables" and not args.partial:
            _check_runs_finished(registry, Path(params_dir), results, args.scale, args.extra_seeds, args.gap_study)
        if args.command in ("tables", "figures", "study", "gap-study"):  # they write under <results>/<scale>/
            check_writable_dir(ScaleOutputs(results, args.scale).root, "--results")
    summary_out = getattr(args, "summary_out", None)
    if summary_out:
        check_writable_file(Path(summary_out), "--summary-out")


def _check_runs_finished(
    registry: dict, params_dir: Path, results: Path, scale: str, extra_seeds: bool, gap_study: bool
) -> None:
    """Every evaluate run the tables and claims read has its metrics: tables of empty rows look like results."""
    from .claims import claim_experiments, load_claims  # scipy: only for this command

    claims = load_claims(params_dir, registry, read_yaml(params_dir / "paper_results.yaml"))
    out = ScaleOutputs(results, scale)
    runs = table_runs(registry, scale, claim_experiments(claims, gap_study), extra_seeds)
    missing: dict[str, list[str]] = {}
    for exp, seed in runs:
        if not (out.run_dir(exp, seed, "evaluate") / "metrics.json").is_file():
            missing.setdefault(exp, []).append(str(seed))
    if missing:
        count = sum(len(seeds) for seeds in missing.values())
        rows = "; ".join(f"{exp} (seed {', '.join(seeds)})" for exp, seeds in missing.items())
        raise InputError(
            f"--results {results}: {count} of the {len(runs)} runs the tables read have no "
            f"{out.run_dir('<row>', '<seed>', 'evaluate').relative_to(results)}/metrics.json: {rows}; "
            "finish them (snakemake), or pass --partial to render tables with their cells empty"
        )
