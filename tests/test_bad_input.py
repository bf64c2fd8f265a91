"""Every ``splitnet`` command refuses bad input with one line, exit code 2, and touches nothing.

One table of cases, each a command line built from a shared, read-only world (prepared planted
CIFAR-format data, model files of every kind, a finished stage directory, a params directory
with rows and scales that are wrong in one way each). Every case asserts:

* exit code 2 and exactly one line on stderr, ``splitnet <command>: error: ...``, no traceback;
* the line names the culprit (argument, file or params key);
* nothing already computed changed: the world's files (paths, mtimes, SHA-256) are the same
  before and after, and no file or directory appeared.

Most cases call ``splitnet.cli.main`` in-process; a few run ``python -m splitnet`` to show that
no traceback reaches a terminal, and one shows that ``--debug`` does print it.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from splitnet import artifacts
from splitnet.assignment import GroupAssignments
from splitnet.cli import main
from splitnet.data import write_planted_cifar
from splitnet.data.fashion_mnist import FILES
from splitnet.io import atomic_torch_save, atomic_write_bytes, os_error_text
from splitnet.model import WideResNet, wrn_plan
from splitnet.partition import balanced_partition
from splitnet.records import RunRecorder
from splitnet.spec import SplitSpec
from splitnet.split import build_split_network
from splitnet.topology import build_topology

REPO = Path(__file__).resolve().parents[1]
CLASSES = 20  # 4 superclasses x 5 classes: room for a 17-group split that fits the classes but not stage 2
ENGINE = {
    "device": "cpu",
    "batch_size": 16,
    "eval_batch_size": 100,
    "channels_last": False,
    "bf16": False,
    "compile": False,
    "normalization": "per_image",
    "augment_pad": 1,
    "augment_flip": True,
    "checkpoint_every": 1,
    "log_every": 100,
    "threads": 1,
}
EPOCHS = {"train": 1, "group": 1, "finetune": 1, "ssl": 1}
EXTRA_ROWS = {
    "fc24": {"method": "splitnet", "group": {"split": "1-1-24"}},  # more fc groups than classes
    "deep17": {"method": "splitnet", "group": {"split": "17-17-17"}},  # more groups than stage 2's 16 inputs
    "random24": {"method": "random", "group": {"split": "1-1-24"}},
    "strict": {"method": "splitnet", "group": {"split": "1-2-2"}, "split": {"empty_groups": "error"}},
}


@dataclass(frozen=True)
class World:
    root: Path  # everything under it must survive every case unchanged
    params: Path
    data: Path
    finished: Path  # a finished stage directory: the --out of most cases
    models: Path


def _scale(data: dict, arch: str = "wrn-10-1", **engine) -> dict:
    return {
        "description": "bad-input test",
        "gpus": 0,
        "finetune_workers": 1,
        "seeds": [0],
        "data": data,
        "model": {"arch": arch},
        "engine": {**ENGINE, **engine},
        "epochs": EPOCHS,
    }


def _write_bad_idx(directory: Path) -> None:
    """Fashion-MNIST file names holding gzip files whose IDX magic number is wrong."""
    directory.mkdir(parents=True)
    for pair in FILES.values():
        for name in pair:
            (directory / name).write_bytes(gzip.compress(b"\x00\x00\x09\x09" + bytes(64)))


class Payload:
    """Unpickling it would run code (``os.mkdir(target)``): what a safe loader must refuse."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.target),))


def _unsafe(path: Path, **content: object) -> Path:
    """A torch file holding a code-running pickle (it would create ``<path>.ran``) next to ``content``."""
    torch.save({**content, "payload": Payload(path.with_name(path.name + ".ran"))}, path)
    return path


def _recorded_then_changed(run_dir: Path, save: Callable[[Path], None]) -> None:
    """A model file with the run record its stage writes, then a few of its weight bytes flipped."""
    path = run_dir / "model.pt"
    recorder = RunRecorder(run_dir, "baseline", "train", "tiny", {})
    save(path)
    recorder.finish({}, [path])
    weights = max(artifacts.load_artifact(path)["state_dict"].values(), key=lambda t: t.numel())
    data = bytearray(path.read_bytes())
    at = data.find(weights.numpy().tobytes())
    assert at > 0
    data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    with open(path, "r+b") as fh:  # in place, as a disk error or a careless edit would
        fh.write(data)


def _save_models(models: Path) -> None:
    """Model files of every kind for the 20-class, 3-channel data, plus damaged and foreign ones."""
    models.mkdir()
    torch.manual_seed(0)
    plan = wrn_plan(10, 1, 3, CLASSES)
    dense = WideResNet(plan)
    artifacts.save_dense(dense, models / "dense.pt")
    artifacts.save_dense(WideResNet(wrn_plan(16, 1, 3, CLASSES)), models / "dense_wrn16.pt")
    artifacts.save_dense(WideResNet(wrn_plan(10, 1, 3, 10)), models / "dense_10classes.pt")
    spec = SplitSpec.parse("1-2-2")
    topology = build_topology(plan, spec)
    matrices = GroupAssignments(topology, "softmax", generator=torch.Generator().manual_seed(1)).matrices()
    artifacts.save_grouping(dense, spec, matrices, models / "grouping.pt")
    # every node assigned to group 0: group 1 of every vector is empty
    collapsed = {name: torch.stack([torch.ones(m.shape[1]), torch.zeros(m.shape[1])]) for name, m in matrices.items()}
    artifacts.save_grouping(dense, spec, collapsed, models / "grouping_collapsed.pt")
    partition = balanced_partition(topology)
    split = build_split_network(topology, partition, "shared", "preact", dense=dense)
    artifacts.save_split(split, plan, spec, partition, "shared", "preact", models / "split.pt")
    _recorded_then_changed(models / "changed_dense", lambda path: artifacts.save_dense(dense, path))
    _recorded_then_changed(
        models / "changed_split",
        lambda path: artifacts.save_split(split, plan, spec, partition, "shared", "preact", path),
    )
    _unsafe(models / "unsafe.pt", format=artifacts.FORMAT, kind="dense")
    blob = artifacts.load_artifact(models / "dense.pt")
    blob["state_dict"] = {k: v for k, v in list(blob["state_dict"].items())[1:]}  # a weight went missing
    torch.save(blob, models / "damaged.pt")
    torch.save({"weights": torch.zeros(3)}, models / "foreign.pt")
    (models / "garbage.pt").write_bytes(b"this is not a torch file\n" * 10)
    (models / "empty.pt").write_bytes(b"")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad_input")
    md5 = write_planted_cifar(
        root / "planted", num_superclasses=4, classes_per_superclass=5, train_per_class=8, test_per_class=2, seed=0
    )
    _write_bad_idx(root / "bad_idx")
    params = root / "params"
    params.mkdir()
    experiments = yaml.safe_load((REPO / "params" / "experiments.yaml").read_text())
    experiments["experiments"].update(EXTRA_ROWS)
    (params / "experiments.yaml").write_text(yaml.safe_dump(experiments, sort_keys=False))
    planted = {"source": "cifar100", "root": str(root / "planted"), "md5": md5, "val_size": 40, "resize": 8, "seed": 0}
    # the repo's scales stay: the grouping study in experiments.yaml names two of them
    scales = {
        **yaml.safe_load((REPO / "params" / "scales.yaml").read_text())["scales"],
        "tiny": _scale(planted),
        "toobig": _scale(planted, batch_size=5000),
        "gpu99": _scale(planted, device="cuda:99"),
        "baddevice": _scale(planted, device="gpu"),
        "baddepth": _scale(planted, arch="wrn-15-1"),
        "badwidth": _scale(planted, arch="wrn-10-0"),
        "noroot": _scale({"source": "fashion_mnist", "root": str(root / "nowhere")}),
        "datatypo": _scale({**planted, "val_sise": 3}),
        "badidx": _scale({"source": "fashion_mnist", "root": str(root / "bad_idx")}),
        "bigval": _scale({**planted, "val_size": 100000}),
    }
    (params / "scales.yaml").write_text(yaml.safe_dump({"scales": scales}, sort_keys=False))
    for name in ("paper_results.yaml", "claims.yaml"):  # what the tables and claims read
        shutil.copy(REPO / "params" / name, params / name)
    data = root / "data"
    assert (
        main(
            [
                "prepare-data",
                "--experiment",
                "baseline",
                "--scale",
                "tiny",
                "--params-dir",
                str(params),
                "--out",
                str(data),
            ]
        )
        == 0
    )
    # prepared directories damaged in one way each
    for name, damage in (("tampered_train", "train.pt"), ("tampered_test", "test.pt")):
        shutil.copytree(data, root / name)
        with open(root / name / damage, "r+b") as fh:
            fh.seek(-1, os.SEEK_END)
            last = fh.read(1)
            fh.seek(-1, os.SEEK_END)
            fh.write(bytes([last[0] ^ 0xFF]))
    shutil.copytree(data, root / "unsafe_data")  # its manifest vouches for the unsafe test split
    manifest = json.loads((data / "manifest.json").read_text())
    test_split = _unsafe(root / "unsafe_data" / "test.pt", images=torch.zeros(1))
    manifest["splits"]["test"]["sha256"] = hashlib.sha256(test_split.read_bytes()).hexdigest()
    (root / "unsafe_data" / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(data, root / "bad_manifest")
    (root / "bad_manifest" / "manifest.json").write_text("{ not json")
    (root / "empty_dir").mkdir()
    _save_models(root / "models")
    finished = root / "finished"
    finished.mkdir()
    shutil.copy(root / "models" / "dense.pt", finished / "model.pt")
    (finished / "run.json").write_text('{"status": "FINISHED"}\n')
    (root / "a_file").write_text("not a directory\n")
    return World(root, params, data, finished, root / "models")


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` with its mtime and (files) SHA-256."""
    out = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(root))] = (path.stat().st_mtime_ns, digest)
    return out


def _broken_params(
    world: World, tmp: Path, edit: Callable[[dict, dict], None] | None = None, experiments_text: str | None = None
) -> Path:
    """A copy of the world's params with one edit (or experiments.yaml replaced by ``experiments_text``)."""
    params = tmp / "params"
    shutil.copytree(world.params, params)
    experiments = yaml.safe_load((params / "experiments.yaml").read_text())
    scales = yaml.safe_load((params / "scales.yaml").read_text())
    if edit is not None:
        edit(experiments, scales)
    (params / "experiments.yaml").write_text(experiments_text or yaml.safe_dump(experiments))
    (params / "scales.yaml").write_text(yaml.safe_dump(scales))
    return params


def _baseline_lr(value: object) -> Callable[[dict, dict], None]:
    def edit(experiments: dict, scales: dict) -> None:
        experiments["experiments"]["baseline"]["train"] = {"schedule": {"lr": value}}

    return edit


@dataclass(frozen=True)
class Case:
    """A command line (built from the world and a scratch directory) and what its error must name."""

    id: str
    argv: Callable[[World, Path], list]
    culprits: tuple[str, ...]


def stage(command: str, experiment: str, scale: str = "tiny", **options: object) -> Callable[[World, Path], list]:
    """A stage command line; option values may be callables of (world, tmp), e.g. ``data=lambda w, t: ...``."""

    def argv(w: World, tmp: Path) -> list:
        values = {
            "params_dir": w.params,
            "out": w.finished,
            **({} if command in ("prepare-data", "split") else {"data": w.data}),
            **options,
        }
        args = [command, "--experiment", experiment, "--scale", scale]
        for key, value in values.items():
            value = value(w, tmp) if callable(value) else value
            if value is not None:
                args += [f"--{key.replace('_', '-')}", value]
        return args

    return argv


def model(name: str) -> Callable[[World, Path], Path]:
    return lambda w, tmp: w.models / name


def under_root(name: str) -> Callable[[World, Path], Path]:
    return lambda w, tmp: w.root / name


def params_with(edit: Callable[[dict, dict], None] | None = None, experiments_text: str | None = None):
    return lambda w, tmp: _broken_params(w, tmp, edit, experiments_text)


def _milestones_replaced(value: str) -> str:
    """The repository's experiments.yaml with defaults.train.schedule.milestones set to ``value`` (YAML text)."""
    text = (REPO / "params" / "experiments.yaml").read_text()
    assert "milestones: [80, 120, 160]" in text
    return text.replace("milestones: [80, 120, 160]", f"milestones: {value}", 1)


# Billion laughs inside a valid key: 9 levels of 9 aliases each, 9^9 values from ~300 characters.
ALIAS_BOMB = _milestones_replaced(
    "[&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1], "
    + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9))
    + ", ["
    + ", ".join(["*l8"] * 9)
    + "]]"
)


def symlink_loop(name: str) -> Callable[[World, Path], Path]:
    """``<scratch>/<name>``, a symlink to ``<name>.2``, which links back: every lookup fails with ELOOP."""

    def make(w: World, tmp: Path) -> Path:
        (tmp / f"{name}.2").symlink_to(tmp / name)
        (tmp / name).symlink_to(tmp / f"{name}.2")
        return tmp / name

    return make


def _row_named(name: str) -> Callable[[dict, dict], None]:
    def edit(experiments: dict, scales: dict) -> None:
        experiments["experiments"][name] = {"method": "baseline"}

    return edit


CASES = [
    # ---------------------------------------------------------------- prepare-data
    Case("prepare_unknown_scale", stage("prepare-data", "baseline", "huge"), ("--scale 'huge'", "scales.yaml")),
    Case("prepare_unknown_experiment", stage("prepare-data", "nope"), ("--experiment 'nope'", "experiments.yaml")),
    Case("prepare_missing_root", stage("prepare-data", "baseline", "noroot"), ("scales.noroot.data.root", "nowhere")),
    Case("prepare_data_key_typo", stage("prepare-data", "baseline", "datatypo"), ("scales.datatypo.data", "val_sise")),
    Case("prepare_corrupt_idx", stage("prepare-data", "baseline", "badidx"), ("bad_idx", "magic")),
    Case(
        "prepare_val_size_too_big",
        stage("prepare-data", "baseline", "bigval"),
        ("scales.yaml: scales.bigval.data.val_size", "160 train images"),
    ),
    Case("prepare_out_is_file", stage("prepare-data", "baseline", out=under_root("a_file")), ("--out", "a_file")),
    Case(
        "prepare_out_under_file",
        stage("prepare-data", "baseline", out=lambda w, t: w.root / "a_file" / "sub"),
        ("--out", "a_file"),
    ),
    Case(
        "prepare_out_symlink_loop",
        stage("prepare-data", "baseline", out=symlink_loop("out")),
        ("--out", "/out:", "symlink loop"),
    ),
    Case(
        "prepare_raw_root_symlink_loop",
        lambda w, t: stage(
            "prepare-data",
            "baseline",
            "noroot",
            params_dir=params_with(
                lambda e, s: s["scales"]["noroot"]["data"].update(root=str(symlink_loop("raw")(w, t)))
            ),
        )(w, t),
        ("scales.noroot.data.root", "/raw:", "symlink loop"),
    ),
    Case(
        "prepare_no_out",
        lambda w, t: ["prepare-data", "--experiment", "baseline", "--params-dir", w.params],
        ("--out",),
    ),
    Case(
        "prepare_missing_params_dir",
        stage("prepare-data", "baseline", params_dir=lambda w, t: t / "none"),
        ("experiments.yaml not found",),
    ),
    # ---------------------------------------------------------------- train
    Case("train_split_row", stage("train", "shallow"), ("--experiment 'shallow'", "no train stage")),
    Case(
        "train_batch_exceeds_images",
        stage("train", "baseline", "toobig"),
        ("scales.toobig.engine.batch_size", "5000", "training images"),
    ),
    Case("train_cuda_not_available", stage("train", "baseline", "gpu99"), ("scales.gpu99.engine.device",)),
    Case("train_not_a_device", stage("train", "baseline", "baddevice"), ("scales.baddevice.engine.device", "'gpu'")),
    Case("train_arch_depth", stage("train", "baseline", "baddepth"), ("scales.baddepth.model.arch", "6n+4")),
    Case("train_arch_width", stage("train", "baseline", "badwidth"), ("scales.badwidth.model.arch", "width")),
    Case(
        "train_data_missing",
        stage("train", "baseline", data=under_root("never_prepared")),
        ("--data", "never_prepared"),
    ),
    Case(
        "train_data_symlink_loop",
        stage("train", "baseline", data=symlink_loop("data")),
        ("--data", "/data:", "symlink loop", "fix or remove the link"),
    ),
    Case(
        "train_data_under_file",
        stage("train", "baseline", data=lambda w, t: w.root / "a_file" / "data"),
        ("--data", "a_file is a file, not a directory"),
    ),
    Case(
        "train_out_under_symlink_loop",
        stage("train", "baseline", out=lambda w, t: symlink_loop("runs")(w, t) / "train"),
        ("--out", "/runs/train:", "symlink loop"),
    ),
    Case(
        "train_data_not_prepared",
        stage("train", "baseline", data=under_root("empty_dir")),
        ("empty_dir/manifest.json", "prepare-data"),
    ),
    Case(
        "train_data_tampered",
        stage("train", "baseline", data=under_root("tampered_train")),
        ("tampered_train/train.pt", "modified"),
    ),
    Case(
        "train_manifest_corrupt",
        stage("train", "baseline", data=under_root("bad_manifest")),
        ("bad_manifest/manifest.json",),
    ),
    Case(
        "train_lr_nan",
        stage("train", "baseline", params_dir=params_with(_baseline_lr(float("nan")))),
        ("experiments.yaml", "experiments.baseline.train.schedule.lr", "finite"),
    ),
    Case(
        "train_lr_inf",
        stage("train", "baseline", params_dir=params_with(_baseline_lr(float("inf")))),
        ("experiments.baseline.train.schedule.lr", "finite"),
    ),
    Case(
        "train_lr_negative",
        stage("train", "baseline", params_dir=params_with(_baseline_lr(-0.1))),
        ("experiments.baseline.train.schedule.lr",),
    ),
    Case(
        "train_lr_as_text",
        stage("train", "baseline", params_dir=params_with(_baseline_lr("1e-3"))),
        ("experiments.baseline.train.schedule.lr", "1.0e-3"),
    ),
    Case(
        "train_weight_decay_inf",
        stage(
            "train",
            "baseline",
            params_dir=params_with(lambda e, s: e["defaults"]["train"]["schedule"].update(weight_decay=float("-inf"))),
        ),
        ("defaults.train.schedule.weight_decay", "finite"),
    ),
    Case(
        "train_gamma_nan",
        stage(
            "train",
            "baseline",
            params_dir=params_with(lambda e, s: e["defaults"]["group"].update(gamma_balance=float("nan"))),
        ),
        ("defaults.group.gamma_balance",),
    ),
    Case(
        "train_batch_size_zero",
        stage(
            "train", "baseline", params_dir=params_with(lambda e, s: s["scales"]["tiny"]["engine"].update(batch_size=0))
        ),
        ("scales.yaml", "scales.tiny.engine.batch_size"),
    ),
    Case(
        "train_schedule_typo",
        stage(
            "train",
            "baseline",
            params_dir=params_with(lambda e, s: e["experiments"]["baseline"].update(train={"schedule": {"epochz": 3}})),
        ),
        ("experiments.baseline.train.schedule", "epochz"),
    ),
    Case(
        "train_params_not_yaml",
        stage("train", "baseline", params_dir=params_with(experiments_text="defaults: [unclosed\n")),
        ("experiments.yaml", "not valid YAML"),
    ),
    Case(
        "train_params_recursive_alias",
        stage("train", "baseline", params_dir=params_with(experiments_text=_milestones_replaced("&m [80, *m]"))),
        ("experiments.yaml", "defaults.train.schedule.milestones", "line 12", "refers to a value that contains it"),
    ),
    Case(
        "train_params_recursive_merge_key",
        stage(
            "train",
            "baseline",
            params_dir=params_with(
                experiments_text=_milestones_replaced("[80]").replace("defaults:\n", "defaults: &d\n  <<: *d\n", 1)
            ),
        ),
        ("experiments.yaml", "defaults.<<", "refers to a value that contains it"),
    ),
    Case(
        "train_params_nested_too_deeply",
        stage(
            "train", "baseline", params_dir=params_with(experiments_text=_milestones_replaced("[" * 5000 + "]" * 5000))
        ),
        ("experiments.yaml", "nested too deeply"),
    ),
    # a row named `..` would put its run folders next to runs/, not in it
    Case(
        "prepare_row_named_dotdot",
        stage("prepare-data", "baseline", params_dir=params_with(_row_named(".."))),
        ("experiments.yaml: experiments", "'..'", "path separators are refused"),
    ),
    Case(
        "prepare_row_name_with_separator",
        stage("prepare-data", "baseline", params_dir=params_with(_row_named("a/b"))),
        ("experiments.yaml: experiments", "'a/b'", "rename it"),
    ),
    Case(
        "prepare_preset_named_dot",
        stage("prepare-data", "baseline", params_dir=params_with(lambda e, s: e["presets"].update({".": {}}))),
        ("experiments.yaml: presets", "'.'", "rename it"),
    ),
    Case(
        "prepare_scale_named_dotdot",
        stage(
            "prepare-data",
            "baseline",
            params_dir=params_with(lambda e, s: s["scales"].update({"..": s["scales"]["tiny"]})),
        ),
        ("scales.yaml: scales", "'..'", "rename it"),
    ),
    Case("train_unknown_option", lambda w, t: stage("train", "baseline")(w, t) + ["--epochs", "3"], ("--epochs",)),
    # ---------------------------------------------------------------- learn-groups
    Case(
        "learn_more_fc_groups_than_classes",
        stage("learn-groups", "fc24"),
        ("experiments.fc24.group.split", "1-1-24", "20 classes"),
    ),
    Case(
        "learn_more_groups_than_stage_width",
        stage("learn-groups", "deep17"),
        ("experiments.deep17.group.split", "stage 2", "16"),
    ),
    Case("learn_ssl_without_baseline", stage("learn-groups", "ssl_1e-3"), ("--baseline is required",)),
    Case(
        "learn_ssl_from_grouping_model",
        stage("learn-groups", "ssl_1e-3", baseline=model("grouping.pt")),
        ("--baseline", "grouping.pt", "grouping model", "dense"),
    ),
    Case(
        "learn_splitnet_given_baseline",
        stage("learn-groups", "shallow", baseline=model("dense.pt")),
        ("--baseline", "drop"),
    ),
    Case("learn_random_row", stage("learn-groups", "shallow_random"), ("'shallow_random'", "no learn-groups stage")),
    Case(
        "learn_baseline_not_torch",
        stage("learn-groups", "ssl_1e-3", baseline=model("garbage.pt")),
        ("--baseline", "garbage.pt", "not written by this project or damaged"),
    ),
    Case(
        "learn_baseline_unsafe_pickle",
        stage("learn-groups", "ssl_1e-3", baseline=model("unsafe.pt")),
        ("--baseline", "unsafe.pt", "refused unsafe content", "delete it and rerun the stage that makes it"),
    ),
    Case(
        "learn_checkpoint_unsafe_pickle",
        lambda w, t: stage("learn-groups", "shallow", out=lambda w, t: _unsafe_checkpoint(t))(w, t) + ["--resume"],
        ("checkpoint.pt", "refused unsafe content", "delete it and rerun the stage that makes it"),
    ),
    # ---------------------------------------------------------------- split
    Case(
        "split_dense_for_splitnet",
        stage("split", "shallow", source=model("dense.pt")),
        ("--source", "dense.pt", "dense model", "grouping"),
    ),
    Case(
        "split_grouping_for_random",
        stage("split", "shallow_random", source=model("grouping.pt")),
        ("--source", "grouping.pt", "grouping model", "dense"),
    ),
    Case("split_missing_source", stage("split", "shallow", source=model("nope.pt")), ("--source", "nope.pt not found")),
    Case(
        "split_source_symlink_loop",
        stage("split", "shallow", source=symlink_loop("model.pt")),
        ("--source", "model.pt:", "symlink loop"),
    ),
    Case(
        "split_source_under_file",
        stage("split", "shallow", source=lambda w, t: w.root / "a_file" / "model.pt"),
        ("--source", "a_file is a file, not a directory"),
    ),
    Case(
        "split_source_is_directory",
        stage("split", "shallow", source=lambda w, t: w.models),
        ("--source", "is a directory"),
    ),
    Case("split_other_spec", stage("split", "deep", source=model("grouping.pt")), ("--source", "split 1-2-2", "2-2-2")),
    Case("split_baseline_row", stage("split", "baseline", source=model("dense.pt")), ("no split stage",)),
    Case(
        "split_model_changed_after_written",
        stage("split", "shallow_random", source=model("changed_dense/model.pt")),
        ("--source", "changed_dense/model.pt", "does not match the sha256", "changed_dense/run.json", "rerun"),
    ),
    Case(
        "split_foreign_torch_file",
        stage("split", "shallow", source=model("foreign.pt")),
        ("--source", "foreign.pt", "not a splitnet model file"),
    ),
    Case(
        "split_damaged_model",
        stage("split", "ssl_1e-3", source=model("damaged.pt")),
        ("--source", "damaged.pt", "cannot be rebuilt"),
    ),
    Case(
        "split_random_more_groups_than_classes",
        stage("split", "random24", source=model("dense.pt")),
        ("experiments.random24.group.split", "20 classes"),
    ),
    Case(
        "split_empty_group_refused",
        stage("split", "strict", source=model("grouping_collapsed.pt")),
        ("--source", "grouping_collapsed.pt", "experiments.strict.split.empty_groups"),
    ),
    Case("split_without_source", lambda w, t: ["split", "--experiment", "shallow", "--out", w.finished], ("--source",)),
    # ---------------------------------------------------------------- finetune
    Case(
        "finetune_grouping_model",
        stage("finetune", "shallow", source=model("grouping.pt")),
        ("--source", "grouping.pt", "grouping model", "split model"),
    ),
    Case(
        "finetune_split_model_for_ssl",
        stage("finetune", "ssl_1e-3", source=model("split.pt")),
        ("--source", "split.pt", "dense"),
    ),
    Case(
        "finetune_other_arch",
        stage("finetune", "ssl_1e-3", source=model("dense_wrn16.pt")),
        ("--source", "wrn-16-1", "scales.tiny.model.arch"),
    ),
    Case(
        "finetune_other_classes",
        stage("finetune", "ssl_1e-3", source=model("dense_10classes.pt")),
        ("--source", "10 classes", "--data"),
    ),
    Case(
        "finetune_model_changed_after_written",
        stage("finetune", "shallow", source=model("changed_split/model.pt")),
        ("--source", "changed_split/model.pt", "does not match the sha256", "changed_split/run.json"),
    ),
    Case(
        "finetune_checkpoint_unsafe_pickle",
        lambda w, t: (
            stage("finetune", "shallow", source=model("split.pt"), out=lambda w, t: _unsafe_checkpoint(t))(w, t)
            + ["--resume"]
        ),
        ("checkpoint.pt", "refused unsafe content"),
    ),
    Case(
        "finetune_without_data",
        lambda w, t: ["finetune", "--experiment", "shallow", "--source", w.models / "split.pt", "--out", w.finished],
        ("--data",),
    ),
    Case(
        "split_resume_not_an_option",
        lambda w, t: stage("split", "shallow", source=model("grouping.pt"))(w, t) + ["--resume"],
        ("--resume",),
    ),
    # ---------------------------------------------------------------- evaluate
    Case(
        "evaluate_baseline_with_split_model",
        stage("evaluate", "baseline", source=model("split.pt")),
        ("--source", "split.pt", "split model", "dense"),
    ),
    Case(
        "evaluate_splitnet_with_dense_model",
        stage("evaluate", "shallow", source=model("dense.pt")),
        ("--source", "dense.pt", "split model"),
    ),
    Case(
        "evaluate_test_data_tampered",
        stage("evaluate", "baseline", source=model("dense.pt"), data=under_root("tampered_test")),
        ("tampered_test/test.pt",),
    ),
    Case(
        "evaluate_model_changed_after_written",
        stage("evaluate", "baseline", source=model("changed_dense/model.pt")),
        ("--source", "changed_dense/model.pt", "does not match the sha256", "changed_dense/run.json"),
    ),
    Case(
        "evaluate_unsafe_model",
        stage("evaluate", "baseline", source=model("unsafe.pt")),
        ("--source", "unsafe.pt", "not written by this project", "refused unsafe content"),
    ),
    Case(
        "evaluate_unsafe_data_split",
        stage("evaluate", "baseline", source=model("dense.pt"), data=under_root("unsafe_data"), out=lambda w, t: t),
        ("unsafe_data/test.pt", "refused unsafe content", "prepare-data"),
    ),
    Case(
        "evaluate_empty_model_file", stage("evaluate", "baseline", source=model("empty.pt")), ("--source", "empty.pt")
    ),
    # ---------------------------------------------------------------- summary
    Case(
        "summary_unknown_split_name",
        lambda w, t: ["summary", "--split", "bogus", "--params-dir", w.params],
        ("--split 'bogus'", "shallow"),
    ),
    Case("summary_decreasing_spec", lambda w, t: ["summary", "--split", "4-2-2"], ("--split '4-2-2'", "decrease")),
    Case(
        "summary_more_groups_than_classes",
        lambda w, t: ["summary", "--split", "1-1-8", "--num-classes", "4"],
        ("--split 1-1-8", "4 classes"),
    ),
    Case(
        "summary_more_groups_than_width",
        lambda w, t: ["summary", "--split", "20-20-20", "--arch", "wrn-10-1"],
        ("--split 20-20-20", "stage 2", "wrn-10-1"),
    ),
    Case("summary_not_a_wrn", lambda w, t: ["summary", "--split", "1-2-2", "--arch", "resnet50"], ("--arch resnet50",)),
    Case("summary_bad_depth", lambda w, t: ["summary", "--split", "1-2-2", "--arch", "wrn-15-8"], ("--arch wrn-15-8",)),
    Case(
        "summary_dense_model",
        lambda w, t: ["summary", "--model", w.models / "dense.pt"],
        ("--model", "dense.pt", "dense model"),
    ),
    Case(
        "summary_zero_classes", lambda w, t: ["summary", "--split", "1-2-2", "--num-classes", "0"], ("--num-classes",)
    ),
    Case(
        "summary_image_size_not_int",
        lambda w, t: ["summary", "--split", "1-2-2", "--image-size", "big"],
        ("--image-size",),
    ),
    Case(
        "summary_split_and_model",
        lambda w, t: ["summary", "--split", "1-2-2", "--model", w.models / "split.pt"],
        ("--model", "--split"),
    ),
    Case(
        "summary_bad_convention",
        lambda w, t: ["summary", "--split", "1-2-2", "--convention", "both"],
        ("--convention",),
    ),
    Case(
        "summary_params_not_yaml",
        lambda w, t: [
            "summary",
            "--split",
            "shallow",
            "--params-dir",
            _experiments_file(t, "experiments: [unclosed\n"),
        ],
        ("experiments.yaml", "not valid YAML"),
    ),
    Case(
        "summary_params_not_utf8",
        lambda w, t: ["summary", "--split", "shallow", "--params-dir", _experiments_file(t, b"defaults: \xff\n")],
        ("experiments.yaml", "not UTF-8"),
    ),
    # ---------------------------------------------------------------- tables, figures, track
    Case(
        "tables_unknown_scale",
        lambda w, t: ["tables", "--scale", "huge", "--params-dir", w.params, "--results", w.root],
        ("--scale 'huge'",),
    ),
    Case(
        "tables_missing_results",
        lambda w, t: ["tables", "--scale", "tiny", "--params-dir", w.params, "--results", w.root / "no_results"],
        ("--results", "no_results"),
    ),
    Case(
        "tables_no_finished_runs",
        lambda w, t: ["tables", "--scale", "tiny", "--params-dir", w.params, "--results", w.root],
        ("--results", "have no tiny/runs/<row>/seed_<seed>/evaluate/metrics.json", "baseline (seed 0)", "--partial"),
    ),
    Case(
        "tables_results_symlink_loop",
        lambda w, t: ["tables", "--scale", "tiny", "--params-dir", w.params, "--results", symlink_loop("res")(w, t)],
        ("--results", "/res:", "symlink loop"),
    ),
    Case(
        "track_summary_out_symlink_loop",  # written through os.replace, it would replace the link
        lambda w, t: [
            "track",
            "--scale",
            "tiny",
            "--params-dir",
            w.params,
            "--results",
            w.root,
            "--summary-out",
            symlink_loop("summary.json")(w, t),
        ],
        ("--summary-out", "summary.json:", "symlink loop"),
    ),
    Case(
        "figures_missing_results",
        lambda w, t: ["figures", "--scale", "tiny", "--params-dir", w.params, "--results", w.root / "no_results"],
        ("--results",),
    ),
    Case(
        "figures_results_is_file",
        lambda w, t: ["figures", "--scale", "tiny", "--results", w.root / "a_file"],
        ("--results", "a_file", "not a directory"),
    ),
    Case(
        "track_summary_out_is_directory",
        lambda w, t: [
            "track",
            "--scale",
            "tiny",
            "--params-dir",
            w.params,
            "--results",
            w.root,
            "--summary-out",
            w.finished,
        ],
        ("--summary-out", "directory"),
    ),
    Case(
        "track_missing_params",
        lambda w, t: ["track", "--scale", "tiny", "--params-dir", t / "none", "--results", w.root],
        ("experiments.yaml not found",),
    ),
    # ---------------------------------------------------------------- no command
    Case("no_command", lambda w, t: [], ("command",)),
    Case("unknown_command", lambda w, t: ["frobnicate"], ("frobnicate",)),
]


def _unsafe_checkpoint(tmp: Path) -> Path:
    """A stage directory (in the case's scratch space) whose checkpoint holds a code-running pickle."""
    out = tmp / "stage"
    out.mkdir(exist_ok=True)
    _unsafe(out / "checkpoint.pt", digest="0" * 64)
    return out


def _experiments_file(tmp: Path, text: str | bytes) -> Path:
    (tmp / "experiments.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    shutil.copy(REPO / "params" / "scales.yaml", tmp / "scales.yaml")
    return tmp


def test_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
    commands = {case.id.split("_")[0] for case in CASES}
    assert {
        "prepare",
        "train",
        "learn",
        "split",
        "finetune",
        "evaluate",
        "summary",
        "tables",
        "figures",
        "track",
    } <= commands


def _command_of(argv: list) -> str | None:
    return next((str(a) for a in argv if not str(a).startswith("-")), None)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_touches_nothing(
    world: World, case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(a) for a in case.argv(world, tmp_path)]
    before = _snapshot(world.root)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    command = _command_of(argv)
    prefix = "splitnet: error: " if command in (None, "frobnicate") else f"splitnet {command}: error: "
    assert code == 2, err
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith(prefix), err
    for culprit in case.culprits:
        assert culprit in err, f"{culprit!r} not named in: {err}"
    assert out == ""
    assert _snapshot(world.root) == before, "a bad input changed what was already there"
    assert not list(tmp_path.rglob("*.ran")), "an unsafe pickle was unpickled"


def _run_cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "splitnet", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_terminal_sees_one_line_not_a_traceback(world: World) -> None:
    before = _snapshot(world.root)
    for args, culprit in (
        (
            [
                "split",
                "--experiment",
                "shallow",
                "--scale",
                "tiny",
                "--params-dir",
                world.params,
                "--source",
                world.models / "dense.pt",
                "--out",
                world.finished,
            ],
            "--source",
        ),
        (
            [
                "train",
                "--experiment",
                "baseline",
                "--scale",
                "toobig",
                "--params-dir",
                world.params,
                "--data",
                world.data,
                "--out",
                world.finished,
            ],
            "scales.toobig.engine.batch_size",
        ),
    ):
        done = _run_cli(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and culprit in done.stderr, done.stderr
    assert _snapshot(world.root) == before


def test_debug_shows_the_traceback(world: World) -> None:
    done = _run_cli(
        "--debug",
        "split",
        "--experiment",
        "shallow",
        "--scale",
        "tiny",
        "--params-dir",
        world.params,
        "--source",
        world.models / "dense.pt",
        "--out",
        world.finished,
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "InputError" in done.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_unwritable_out_is_refused(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    argv = stage("train", "baseline", out=locked / "train")(world, tmp_path)
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {locked / 'train'}" in err and "not writable" in err
    assert list(locked.iterdir()) == []


def test_alias_bomb_is_refused_in_under_two_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = _experiments_file(tmp_path, ALIAS_BOMB)
    argv = ["summary", "--split", "shallow", "--params-dir", str(params)]
    try:  # in a process first: a loader that expands the bomb never returns
        done = _run_cli(*argv, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("an alias bomb in experiments.yaml was expanded instead of refused")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 2.0
    err = capsys.readouterr().err
    assert "experiments.yaml: defaults.train.schedule.milestones" in err and "aliases expand" in err, err


# ---------------------------------------------------------------- the OS refuses a write


@contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where``: a real full disk or read-only file system (needs root)."""
    where.mkdir()
    mount = shutil.which("mount")
    done = (
        subprocess.run([mount, "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if mount
        else None
    )
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _one_error_line(err: str, command: str) -> None:
    assert err.startswith(f"splitnet {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_full_disk_names_the_file_and_leaves_no_partial_file(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(world.root)
    with _tmpfs(tmp_path / "disk", "size=64k") as disk:
        argv = stage("train", "baseline", out=disk / "train")(world, tmp_path)
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        _one_error_line(err, "train")
        # torch.save reported this as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"
        assert f"{disk / 'train'}/" in err and "no space left on device" in err and "--out" in err, err
        assert not list(disk.rglob("*.tmp")), "a partial file was left behind"
    assert _snapshot(world.root) == before


def test_full_disk_keeps_the_finished_file(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "size=64k") as disk:
        target = disk / "model.pt"
        atomic_torch_save({"done": torch.zeros(4)}, target)
        finished = target.read_bytes()
        for write in (
            lambda: atomic_torch_save({"w": torch.zeros(100_000)}, target),
            lambda: atomic_write_bytes(target, bytes(100_000)),
        ):
            with pytest.raises(OSError) as raised:
                write()
            assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
            assert target.read_bytes() == finished and [p.name for p in disk.iterdir()] == ["model.pt"]


def test_read_only_file_system_is_named(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        argv = stage("train", "baseline", out=ro / "train")(world, tmp_path)
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        _one_error_line(err, "train")
        assert f"--out {ro / 'train'}" in err and "is not writable: read-only file system" in err, err
        argv = ["tables", "--scale", "tiny", "--params-dir", world.params, "--results", ro, "--partial"]
        assert main([str(a) for a in argv]) == 2  # refused before the tables are computed
        err = capsys.readouterr().err
        _one_error_line(err, "tables")
        assert f"--results {ro / 'tiny'}" in err and "read-only file system" in err, err
        # a write that the OS refuses (the file system turned read-only after the checks)
        with pytest.raises(OSError) as raised:
            atomic_write_bytes(ro / "tiny" / "table1.md", b"x")
        assert raised.value.errno == errno.EROFS and raised.value.filename == str(ro / "tiny" / "table1.md")
        assert os_error_text(raised.value, "--results") == (
            "read-only file system; choose another --results on a writable file system"
        )


def test_file_size_limit_is_named(world: World, tmp_path: Path) -> None:
    """A real EFBIG without root: ``ulimit -f`` on the process (SIGXFSZ ignored, so write fails)."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    argv = stage("train", "baseline", out=tmp_path / "train")(world, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "splitnet", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.splitlines()[-1]  # training prints progress first
    assert "Traceback" not in done.stderr and err.startswith("splitnet train: error: "), done.stderr
    assert f"{tmp_path / 'train'}/" in err and "file too large" in err, err
    assert not list((tmp_path / "train").rglob("*.tmp"))
