"""Run records and their import into a real MLflow SQLite store (no mocks)."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from splitnet.mlflow_import import TrackEntry, default_tracking_uri, import_runs
from splitnet.records import (
    PROGRESS_RECORD,
    RUN_RECORD,
    RunRecorder,
    check_recorded,
    provenance_tags,
    read_record,
)
from splitnet.run_summaries import flatten_config, groups_per_level

CONFIG = {"model": {"depth": 16, "widen": 8}, "optim": {"lr": 0.1, "milestones": [60, 120]}, "split": "2-2-2"}
STAGES = ("train", "evaluate")
# A row's config as stages record it (splitnet.config.stage_config), for the parent's params.
ROW_CONFIG = {
    "experiment": "deep",
    "scale": "smoke",
    "method": "splitnet",
    "model": {"arch": "wrn-16-1", "dropout": 0.5},
    "engine": {"seed": 0},
    "group": {
        "split": "2-2-2",
        "parametrisation": "softmax",
        "simplex_rule": "paper",
        "gamma_disjoint": 1.0,
        "gamma_weight": 1.0,
        "gamma_balance": 10.0,
        "overlap": None,
    },
}
ROW_PARAMS = {
    "method": "splitnet",
    "scale": "smoke",
    "arch": "wrn-16-1",
    "dropout": "0.5",
    "seed": "0",
    "split": "2-2-2",
    "G": "2",
    "parametrisation": "softmax",
    "gamma_disjoint": "1.0",
    "gamma_weight": "1.0",
    "gamma_balance": "10.0",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No telemetry, no inherited store, and any stray default ./mlflow.db lands in tmp."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def record_run(
    run_dir: Path, name: str, stage: str, epochs: int = 5, offset: float = 0.0, config: dict | None = None
) -> Path:
    """A finished stage with ``epochs`` steps of history and one artifact file."""
    with RunRecorder(run_dir, name, stage, "smoke", config or CONFIG, tags={"origin": "test"}) as rec:
        for epoch in range(epochs):
            rec.log(epoch, {"loss": 1.0 / (epoch + 1) + offset, "acc": epoch / epochs})
        (run_dir / "weights.txt").write_text(f"{name}/{stage}")
        rec.finish({"test_error": 0.25 + offset}, ["weights.txt"])
    return run_dir / RUN_RECORD


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def entries_for(root: Path, table: str, rows: list[str]) -> list[TrackEntry]:
    return [TrackEntry(table, row, [root / row / stage / RUN_RECORD for stage in STAGES]) for row in rows]


def store_state(uri: str) -> dict[tuple[str, str], tuple[str, dict[str, float], str]]:
    """(experiment, run name) -> (run id, latest metrics, status) of every active run."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    state = {}
    for experiment in client.search_experiments(filter_string="name LIKE 'splitnet/%'"):
        for run in client.search_runs([experiment.experiment_id]):
            key = (experiment.name, run.info.run_name)
            assert key not in state, f"duplicate run {key}"
            state[key] = (run.info.run_id, run.data.metrics, run.info.status)
    return state


# --------------------------------------------------------------------------- RunRecorder


def test_recorder_writes_a_complete_record(tmp_path: Path) -> None:
    path = record_run(tmp_path / "run", "deep", "train", epochs=3)
    record = read_record(path)
    assert record["format"] == "splitnet-run/1"
    assert (record["name"], record["stage"], record["scale"]) == ("deep", "train", "smoke")
    assert record["config"] == CONFIG
    assert [h["step"] for h in record["history"]] == [0, 1, 2]
    assert record["history"][1]["metrics"] == {"loss": 0.5, "acc": pytest.approx(1 / 3)}
    assert record["metrics"] == {"test_error": 0.25}
    assert record["artifacts"] == ["weights.txt"]
    assert record["sha256"] == {"weights.txt": hashlib.sha256(b"deep/train").hexdigest()}
    assert record["status"] == "FINISHED"
    assert record["started"] <= record["finished"]
    assert record["tags"]["origin"] == "test"
    assert set(provenance_tags()) <= set(record["tags"])
    assert sorted(p.name for p in path.parent.iterdir()) == [RUN_RECORD, "weights.txt"]


def test_outputs_are_hashed_but_not_artifacts(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, "deep", "learn_groups", "smoke", CONFIG)
    (tmp_path / "model.pt").write_bytes(b"model")
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "step_0.pt").write_bytes(b"snapshot")
    rec.finish({}, [tmp_path / "model.pt"], outputs=[tmp_path / "steps" / "step_0.pt"])
    record = read_record(tmp_path / RUN_RECORD)
    assert record["artifacts"] == ["model.pt"]
    assert record["sha256"] == {
        "model.pt": hashlib.sha256(b"model").hexdigest(),
        "steps/step_0.pt": hashlib.sha256(b"snapshot").hexdigest(),
    }


def test_a_file_is_checked_against_the_record_beside_it(tmp_path: Path) -> None:
    """Changed after its run wrote it: refused, naming file and record. Without a record, or with
    a record older than its sha256 key, there is nothing to check against: accepted."""
    path = record_run(tmp_path / "run", "deep", "train").parent / "weights.txt"
    assert check_recorded(path) == hashlib.sha256(b"deep/train").hexdigest()
    path.write_text("deep/trainX")
    with pytest.raises(ValueError, match=r"weights\.txt does not match the sha256 its stage recorded in .*run\.json"):
        check_recorded(path)
    record = json.loads((path.parent / RUN_RECORD).read_text())
    del record["sha256"]
    (path.parent / RUN_RECORD).write_text(json.dumps(record))
    assert check_recorded(path) == hashlib.sha256(b"deep/trainX").hexdigest()
    (path.parent / RUN_RECORD).write_text("{ damaged")
    with pytest.raises(ValueError, match=r"weights\.txt cannot be checked: .*run\.json beside it"):
        check_recorded(path)
    (path.parent / RUN_RECORD).unlink()
    assert check_recorded(path) == hashlib.sha256(b"deep/trainX").hexdigest()


def test_provenance_names_the_checkout_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SPLITNET_RULE", "learn_groups")
    tags = provenance_tags()
    repo = Path(__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
        assert tags["splitnet.git_dirty"] in ("true", "false")
    assert tags["splitnet.slurm_job_id"] == "4242"
    assert tags["splitnet.rule"] == "learn_groups"
    assert all(isinstance(value, str) for value in tags.values())


def test_records_name_the_environment_and_constraints_txt_names_its_own() -> None:
    """Run records carry the versions they ran with (torch, torchvision, numpy, and a digest of every
    installed version); constraints.txt, the environment of the committed results, states the
    same digest of its pins in its header."""
    from importlib import metadata

    from splitnet.records import environment_digest, pins_digest

    tags = provenance_tags()
    assert tags["splitnet.torchvision"] == metadata.version("torchvision")
    assert tags["splitnet.numpy"] == metadata.version("numpy")
    assert tags["splitnet.environment"] == environment_digest()
    lines = (Path(__file__).resolve().parents[1] / "constraints.txt").read_text().splitlines()
    pins = [line for line in lines if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^=\s]+", pin) for pin in pins), "constraints.txt: name==version only"
    names = {pin.split("==")[0].lower().replace("_", "-") for pin in pins}
    assert {"torch", "torchvision", "numpy", "snakemake", "mlflow", "dvc", "jsonschema"} <= names
    (header,) = [line for line in lines if line.startswith("# splitnet.environment of these pins: ")]
    assert header.rsplit(" ", 1)[1] == pins_digest(pins)


def test_constraints_satisfy_every_requirement_of_the_package() -> None:
    """`SPLITNET_LOCKED=1 bash workflow/scripts/setup.sh` installs the package and its pipeline and
    test extras under constraints.txt: every requirement (and the Python range) admits its pin."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = {
        canonicalize_name(name): version
        for name, _, version in (
            line.partition("==") for line in (root / "constraints.txt").read_text().splitlines() if "==" in line
        )
    }
    requirements = [*project["dependencies"], *project["optional-dependencies"]["pipeline"]]
    requirements += project["optional-dependencies"]["test"]
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert canonicalize_name(req.name) in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), (text, pins[req.name])
    assert "SPLITNET_LOCKED" in (root / "workflow" / "scripts" / "setup.sh").read_text()


def test_resume_replaces_the_steps_after_the_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError), RunRecorder(run_dir, "deep", "train", "smoke", CONFIG) as rec:
        for epoch in range(7):
            rec.log(epoch, {"loss": float(epoch)})
        raise RuntimeError("node died")
    crashed = read_record(run_dir / PROGRESS_RECORD)
    assert crashed["status"] == "FAILED" and crashed["finished"] is not None
    assert not (run_dir / RUN_RECORD).exists()  # nothing finished yet

    # The last checkpoint was taken after epoch 4: epochs 5 and 6 are trained again.
    rec = RunRecorder(run_dir, "deep", "train", "smoke", CONFIG, resume=True)
    assert rec.record["status"] == "RUNNING" and rec.record["finished"] is None
    assert rec.record["started"] == crashed["started"]
    assert rec.last_step == 6
    for epoch in range(5, 10):
        rec.log(epoch, {"loss": 10.0 * epoch})
    rec.finish({"test_error": 0.2})
    record = read_record(run_dir / RUN_RECORD)
    assert [h["step"] for h in record["history"]] == list(range(10))
    assert [h["metrics"]["loss"] for h in record["history"]][4:7] == [4.0, 50.0, 60.0]
    assert record["status"] == "FINISHED"
    assert not (run_dir / PROGRESS_RECORD).exists()


def test_a_failed_rerun_keeps_the_finished_record(tmp_path: Path) -> None:
    """Nothing finished is lost by a later failure: run.json stays byte for byte."""
    path = record_run(tmp_path / "run", "deep", "train", epochs=3)
    finished = path.read_bytes()
    for resume in (False, True):
        with (
            pytest.raises(RuntimeError),
            RunRecorder(path.parent, "deep", "train", "smoke", CONFIG, resume=resume) as rec,
        ):
            rec.log(0, {"loss": 9.0})
            assert path.read_bytes() == finished  # progress goes elsewhere while running
            raise RuntimeError("rerun crashed")
        assert path.read_bytes() == finished
        progress = read_record(path.parent / PROGRESS_RECORD)
        assert progress["status"] == "FAILED" and progress["history"][0]["metrics"] == {"loss": 9.0}
    with pytest.raises(KeyboardInterrupt), RunRecorder(path.parent, "deep", "train", "smoke", CONFIG):
        raise KeyboardInterrupt
    assert path.read_bytes() == finished
    assert read_record(path.parent / PROGRESS_RECORD)["status"] == "KILLED"


def test_truncate_after_drops_stale_steps_at_once(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, "deep", "train", "smoke", CONFIG)
    for epoch in range(1, 8):
        rec.log(epoch, {"loss": 1.0})
    rec = RunRecorder(tmp_path, "deep", "train", "smoke", CONFIG, resume=True)
    rec.truncate_after(4)
    assert [h["step"] for h in read_record(tmp_path / PROGRESS_RECORD)["history"]] == [1, 2, 3, 4]


def test_resume_refuses_another_runs_record(tmp_path: Path) -> None:
    RunRecorder(tmp_path, "deep", "train", "smoke", CONFIG)
    with pytest.raises(ValueError, match="belongs to"):
        RunRecorder(tmp_path, "deep", "evaluate", "smoke", CONFIG, resume=True)
    fresh = RunRecorder(tmp_path / "new", "deep", "train", "smoke", CONFIG, resume=True)
    assert fresh.record["history"] == []


def test_artifacts_are_stored_relative_to_the_run_directory(tmp_path: Path) -> None:
    run_dir = Path("results") / "runs" / "deep" / "train"  # relative, as a CLI passes it
    rec = RunRecorder(run_dir, "deep", "train", "smoke", CONFIG)
    for outside in ("../elsewhere.pt", tmp_path / "elsewhere.pt"):
        with pytest.raises(ValueError, match="outside"):
            rec.finish({}, [outside])
    (tmp_path / "scratch").symlink_to(tmp_path / "results")
    resolved = tmp_path / "scratch" / "runs" / "deep" / "train" / "r.pt"
    rec.finish({}, [run_dir / "model.pt", tmp_path / run_dir / "sub" / "w.pt", "plots", resolved])
    assert rec.record["artifacts"] == ["model.pt", "sub/w.pt", "plots", "r.pt"]


def test_record_is_replaced_atomically(tmp_path: Path) -> None:
    """A reader polling the progress record while another process logs never sees a partial
    file, and run.json appears only once, finished."""
    path = tmp_path / "run" / RUN_RECORD
    progress = path.with_name(PROGRESS_RECORD)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        from splitnet.records import RunRecorder
        rec = RunRecorder({str(path.parent)!r}, "deep", "train", "smoke", {{"pad": "x" * 20000}})
        for step in range(200):
            rec.log(step, {{"loss": 1.0}})
        rec.finish({{}})
    """),
        ]
    )
    reads = 0
    while writer.poll() is None:
        try:
            assert json.loads(progress.read_text())["status"] == "RUNNING"  # raises if torn
            reads += 1
        except FileNotFoundError:  # not started yet, or finished and removed
            pass
        if path.exists():
            assert read_record(path)["status"] == "FINISHED"
    assert writer.returncode == 0
    assert len(read_record(path)["history"]) == 200
    assert [p.name for p in path.parent.iterdir()] == [RUN_RECORD]  # no temp files left
    assert reads > 1


# --------------------------------------------------------------------------- helpers


def test_flatten_config_uses_dotted_keys_and_json_leaves() -> None:
    flat = flatten_config({"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2], "f": None, "g": {}})
    assert flat == {"a.b.c": "1", "a.d": "x", "e": "[1, 2]", "f": "null", "g": "{}"}


def test_groups_per_level() -> None:
    assert [groups_per_level(s) for s in ("1-1-4", "1-2-2", "1-3-3", "2-2-2", "2-4-4", "1-1-1")] == [
        "4",
        "2",
        "3",
        "2",
        "2-4",
        "1",
    ]


def test_default_tracking_uri_keeps_the_path_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_tracking_uri("results") == "sqlite:///results/mlflow.db"  # relative: portable
    assert default_tracking_uri("/data/results") == "sqlite:////data/results/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri("results") == "http://127.0.0.1:5000"


# --------------------------------------------------------------------------- import_runs


def test_reimport_is_a_no_op_and_a_rerun_replaces_only_its_child(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    for row in ("fc", "deep"):
        for stage in STAGES:
            record_run(runs / row / stage, row, stage)
    entries = entries_for(runs, "table1", ["fc", "deep", "hier"])  # hier has not run yet
    uri = sqlite_uri(tmp_path)

    assert import_runs(uri, entries) == {"created": 4, "updated": 0, "unchanged": 0, "missing": 2}
    before = store_state(uri)
    assert set(before) == {
        ("splitnet/table1", name) for name in ("fc", "fc/train", "fc/evaluate", "deep", "deep/train", "deep/evaluate")
    }
    assert before[("splitnet/table1", "deep")][2] == "FINISHED"
    assert import_runs(uri, entries) == {"created": 0, "updated": 0, "unchanged": 4, "missing": 2}
    assert store_state(uri) == before

    record_run(runs / "deep" / "evaluate", "deep", "evaluate", offset=0.5)  # the stage re-ran
    assert import_runs(uri, entries) == {"created": 0, "updated": 1, "unchanged": 3, "missing": 2}
    after = store_state(uri)
    key = ("splitnet/table1", "deep/evaluate")
    old_id, new_id = before[key][0], after[key][0]
    assert new_id != old_id and after[key][1]["test_error"] == 0.75
    assert MlflowClient(uri).get_run(old_id).info.lifecycle_stage == "deleted"
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {key, ("splitnet/table1", "deep")}  # the child and its row's metrics
    assert after[("splitnet/table1", "deep")][0] == before[("splitnet/table1", "deep")][0]
    assert after[("splitnet/table1", "deep")][1]["test_error"] == 0.75


def test_interrupted_import_is_redone(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    record_run(runs / "fc" / "train", "fc", "train")
    entries = [TrackEntry("table1", "fc", [runs / "fc" / "train" / RUN_RECORD])]
    uri = sqlite_uri(tmp_path)
    import_runs(uri, entries)
    client = MlflowClient(uri)
    half_done = store_state(uri)[("splitnet/table1", "fc/train")][0]
    client.delete_tag(half_done, "splitnet.record_sha256")  # as if the importer died mid-run
    assert import_runs(uri, entries)["updated"] == 1
    assert client.get_run(half_done).info.lifecycle_stage == "deleted"
    assert "splitnet.record_sha256" in client.get_run(store_state(uri)[("splitnet/table1", "fc/train")][0]).data.tags


def test_a_record_shared_by_two_tables_is_a_child_in_both(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    for stage in STAGES:
        record_run(runs / "baseline" / stage, "baseline", stage)
    entries = entries_for(runs, "table1", ["baseline"]) + [
        TrackEntry(
            "table2", "baseline", [runs / "baseline" / "train" / RUN_RECORD], experiment_title="SplitNet Table 2"
        )
    ]
    uri = sqlite_uri(tmp_path)
    assert import_runs(uri, entries)["created"] == 3
    client = MlflowClient(uri)
    for title, children in (("splitnet/table1", 2), ("SplitNet Table 2", 1)):
        experiment = client.get_experiment_by_name(title)
        runs_found = client.search_runs([experiment.experiment_id])
        parent = [r for r in runs_found if r.info.run_name == "baseline"]
        assert len(parent) == 1
        kids = [r for r in runs_found if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
        assert len(kids) == children
        assert experiment.artifact_location.startswith((tmp_path / "store").as_uri())


def test_a_row_with_missing_stages_waits(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    record_run(runs / "deep" / "train", "deep", "train")
    uri = sqlite_uri(tmp_path)
    assert import_runs(uri, entries_for(runs, "table1", ["deep"]))["missing"] == 1
    assert store_state(uri)[("splitnet/table1", "deep")][2] == "SCHEDULED"


def test_ambiguous_entries_are_refused_before_touching_the_store(tmp_path: Path) -> None:
    uri = sqlite_uri(tmp_path)
    twice = [TrackEntry("table1", "deep", []), TrackEntry("table1", "deep", [])]
    with pytest.raises(ValueError, match="listed twice"):
        import_runs(uri, twice)
    retitled = [TrackEntry("table1", "deep", []), TrackEntry("table1", "fc", [], "T1")]
    with pytest.raises(ValueError, match="two experiment titles"):
        import_runs(uri, retitled)
    assert not (tmp_path / "store").exists()


def row_parents(uri: str, experiment: str = "splitnet/table1") -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return [run for run in client.search_runs([experiment_id]) if run.data.tags.get("splitnet.kind") == "row"]


def test_a_parent_killed_before_its_params_is_completed_not_duplicated(tmp_path: Path) -> None:
    """An import killed right after creating a parent left it tagged (same call) but bare."""
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    for stage in STAGES:
        record_run(runs / "deep" / stage, "deep", stage, config=ROW_CONFIG)
    uri = sqlite_uri(tmp_path)
    import_runs(uri, [])  # just the store
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("splitnet/table1")
    bare = client.create_run(
        experiment_id,
        start_time=0,
        run_name="deep",
        tags={"splitnet.kind": "row", "splitnet.table": "table1", "splitnet.row": "deep"},
    )
    assert import_runs(uri, entries_for(runs, "table1", ["deep"]))["created"] == 2
    (parent,) = row_parents(uri)
    assert parent.info.run_id == bare.info.run_id
    assert parent.data.params == ROW_PARAMS
    assert parent.data.metrics == {"test_error": 0.25} and parent.info.status == "FINISHED"


def _imported_deep_row(tmp_path: Path) -> tuple[Path, str, list]:
    """The `deep` row's stage records, imported once: (runs dir, store URI, entries)."""
    runs = tmp_path / "runs"
    for stage in STAGES:
        record_run(runs / "deep" / stage, "deep", stage, config=ROW_CONFIG)
    uri = sqlite_uri(tmp_path)
    entries = entries_for(runs, "table1", ["deep"])
    import_runs(uri, entries)
    return runs, uri, entries


def test_extra_parents_of_a_row_are_deleted_with_their_children(tmp_path: Path) -> None:
    """Two parents for one row (an unlocked import raced) never survive the next import."""
    from mlflow import MlflowClient

    _, uri, entries = _imported_deep_row(tmp_path)
    client = MlflowClient(uri)
    (kept,) = row_parents(uri)
    extra = client.create_run(
        kept.info.experiment_id,
        run_name="deep",
        tags={"splitnet.kind": "row", "splitnet.table": "table1", "splitnet.row": "deep"},
    )
    extra_child = client.create_run(
        kept.info.experiment_id,
        run_name="deep/train",
        tags={"mlflow.parentRunId": extra.info.run_id, "splitnet.kind": "stage", "splitnet.stage": "train"},
    )
    assert import_runs(uri, entries) == {"created": 0, "updated": 0, "unchanged": 2, "missing": 0}
    assert [p.info.run_id for p in row_parents(uri)] == [kept.info.run_id]  # the oldest
    for run in (extra, extra_child):
        assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    assert len(store_state(uri)) == 3  # no duplicate run names left


def test_a_row_rerun_with_other_settings_gets_a_new_parent(tmp_path: Path) -> None:
    """MLflow params are immutable: a parent whose params the records contradict is replaced."""
    from mlflow import MlflowClient

    runs, uri, entries = _imported_deep_row(tmp_path)
    (old,) = row_parents(uri)
    changed = {**ROW_CONFIG, "group": {**ROW_CONFIG["group"], "gamma_balance": 5.0}}
    for stage in STAGES:
        record_run(runs / "deep" / stage, "deep", stage, config=changed)
    assert import_runs(uri, entries) == {"created": 2, "updated": 0, "unchanged": 0, "missing": 0}
    (new,) = row_parents(uri)
    assert new.info.run_id != old.info.run_id
    assert new.data.params == ROW_PARAMS | {"gamma_balance": "5.0"}
    assert MlflowClient(uri).get_run(old.info.run_id).info.lifecycle_stage == "deleted"
    assert len(store_state(uri)) == 3


def test_track_command_reads_the_scale_layout_and_writes_a_portable_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from splitnet.cli import main

    repo = Path(__file__).resolve().parents[1]
    runs = Path("results") / "ci" / "runs"  # relative, as Snakemake passes it
    for stage in STAGES:
        record_run(runs / "baseline" / "seed_0" / stage, "baseline", stage)
    summary = Path("results") / "ci" / "tracking.json"
    args = ["track", "--scale", "ci", "--params-dir", str(repo / "params"), "--results", "results"]
    assert main([*args, "--summary-out", str(summary)]) == 0
    text = summary.read_text()
    assert str(tmp_path) not in text  # committed: no absolute path
    written = json.loads(text)
    assert written["tracking_uri"] == "sqlite:///results/mlflow.db"
    assert written["created"] == 2 * 2  # the baseline row of both tables
    assert (tmp_path / "results" / "mlflow.db").is_file()
    assert {p.data.tags["splitnet.row"] for p in row_parents(written["tracking_uri"], "splitnet/ci/table2")} == {
        "baseline/seed_0"
    }

    capsys.readouterr()
    assert main([*args, "--tracking-uri", "nosuchscheme://x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitnet track: error: tracking store nosuchscheme://x")
    assert len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- kill at the N-th write


def on_store_writes(patch: Callable[[Any, str, Any], None], before: Callable[[], None]) -> None:
    """Call ``before()`` ahead of every write to the tracking store or its artifact repository;
    the writes themselves stay the real ones."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    writes = {
        SqlAlchemyStore: (
            "create_experiment",
            "restore_experiment",
            "create_run",
            "update_run_info",
            "log_batch",
            "set_tag",
            "delete_run",
        ),
        LocalArtifactRepository: ("log_artifact", "log_artifacts"),
    }

    def preceded(method: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            before()
            return method(*args, **kwargs)

        return write

    for cls, names in writes.items():
        for name in names:
            patch(cls, name, preceded(getattr(cls, name)))


def _import_then_exit(uri: str, job: dict[str, Any], kill_before: int | None) -> None:
    """The child's body: ``import_runs``, then ``os._exit`` (no cleanup); with ``kill_before``
    it dies just before that write, the way ``kill -9`` kills."""
    status = 1
    try:
        if kill_before is not None:
            count = itertools.count(1)

            def maybe_die() -> None:
                if next(count) == kill_before:
                    os._exit(137)

            on_store_writes(setattr, maybe_die)
        import_runs(uri, **job)
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(status)


def import_in_child(uri: str, job: dict[str, Any], kill_before: int | None = None) -> int:
    """``import_runs(uri, **job)`` in a child process; its exit status. The child forks from a
    single-threaded server (forkserver), not from pytest's process: that one may hold threads
    (torch.compile's workers, from earlier tests) whose locks a plain fork would copy held."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # the server imports this module (and mlflow) once
    child = context.Process(target=_import_then_exit, args=(uri, job, kill_before))
    child.start()
    child.join()
    assert child.exitcode is not None
    return child.exitcode


def store_snapshot(uri: str) -> tuple[dict[tuple, dict[str, Any]], Counter[tuple]]:
    """The active runs by identity, with everything they hold but their ids, and the runs in the
    bin as (identity, status, marked complete); fails on an identity active twice."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    active: dict[tuple, dict[str, Any]] = {}
    binned: Counter[tuple] = Counter()
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
        row_of = {run.info.run_id: run.data.tags.get("splitnet.row") for run in runs}
        for run in runs:
            tags = run.data.tags
            kind = tags["splitnet.kind"]
            identity = (experiment.name, kind, tags.get("splitnet.row"), tags.get("splitnet.stage"), run.info.run_name)
            if run.info.lifecycle_stage == "deleted":
                binned[(identity, run.info.status, "splitnet.record_sha256" in tags)] += 1
                continue
            assert identity not in active, f"{identity} is in the store twice"
            parent = tags.get("mlflow.parentRunId")
            active[identity] = {
                "status": run.info.status,
                "times": None if kind == "files" else (run.info.start_time, run.info.end_time),  # files: import time
                "params": run.data.params,
                "tags": {key: value for key, value in tags.items() if key != "mlflow.parentRunId"},
                "parent": None if parent is None else (row_of[parent], client.get_run(parent).info.lifecycle_stage),
                "history": {
                    key: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key))
                    for key in run.data.metrics
                },
                "artifacts": sorted(artifact.path for artifact in client.list_artifacts(run.info.run_id)),
            }
    return active, binned


def kill_points(writes: int) -> list[int]:
    """Kill before the first write, every few writes, before the last, and after all of them."""
    return sorted({1, *range(2, writes, max(1, writes // 10)), writes, writes + 1})


@pytest.mark.parametrize("update", [False, True], ids=["fresh", "update"])
def test_an_import_killed_at_the_nth_write_is_completed_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update: bool
) -> None:
    """Kill the import before its N-th write, for N spread over all of it, then import again:
    the store holds what a clean import makes (each run once, the same params, metrics and
    artifacts) and at most the one run the kill interrupted, in the bin, ended and unmarked.
    ``update``: the store already holds an earlier import, whose changed runs are replaced."""
    old, new = tmp_path / "old", tmp_path / "new"
    for row in ("fc", "deep"):
        for stage in STAGES:
            record_run(old / row / stage, row, stage, config=ROW_CONFIG)
    record_run(new / "deep" / "evaluate", "deep", "evaluate", offset=0.5, config=ROW_CONFIG)  # the stage re-ran
    rerun = {**ROW_CONFIG, "group": {**ROW_CONFIG["group"], "gamma_balance": 5.0}}
    for stage in STAGES:  # fc re-ran with other settings: a new parent
        record_run(new / "fc" / stage, "fc", stage, config=rerun)
    for folder, text in ((old, "claims v1"), (new, "claims v2")):
        (folder / "claims.md").write_text(text)

    def job(runs: Path) -> dict[str, Any]:
        table1 = [
            TrackEntry("table1", "fc", [runs / "fc" / stage / RUN_RECORD for stage in STAGES]),
            TrackEntry(
                "table1", "deep", [old / "deep" / "train" / RUN_RECORD, runs / "deep" / "evaluate" / RUN_RECORD]
            ),
        ]
        table2 = [TrackEntry("table2", "deep", [old / "deep" / "train" / RUN_RECORD], "splitnet/table2")]
        return {"entries": table1 + table2, "files": {"splitnet/claims": [runs / "claims.md"]}}

    before, after = job(old), job(new)
    empty = tmp_path / "empty" / "mlflow.db"
    import_runs(f"sqlite:///{empty}", [])  # a fresh schema, copied for each trial

    def prepared(name: str) -> str:
        (tmp_path / name).mkdir()
        shutil.copy(empty, tmp_path / name / "mlflow.db")
        uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        if update:
            assert import_in_child(uri, before) == 0
        return uri

    clean = prepared("clean")
    writes: list[None] = []
    with monkeypatch.context() as patch:
        on_store_writes(patch.setattr, lambda: writes.append(None))
        import_runs(clean, **after)
    total = len(writes)
    expected, expected_bin = store_snapshot(clean)
    assert len(expected) == 9  # 2 parents and 4 children in table1, 1 and 1 in table2, the claims run
    assert {run["status"] for run in expected.values()} == {"FINISHED"}
    # Replaced: deep/evaluate, fc with its 2 children, the claims run.
    assert sum(expected_bin.values()) == (5 if update else 0)

    points = kill_points(total)
    assert len(points) >= 10
    for n in points:
        uri = prepared(f"killed_{n}")
        assert import_in_child(uri, after, kill_before=n) == (137 if n <= total else 0), n
        import_runs(uri, **after)
        active, binned = store_snapshot(uri)
        assert active == expected, f"killed before write {n} of {total}"
        assert not expected_bin - binned, n  # what the clean import replaced is replaced
        interrupted = binned - expected_bin
        assert sum(interrupted.values()) <= 1, (n, interrupted)
        assert all(status != "RUNNING" and not complete for _, status, complete in interrupted), (n, interrupted)


# --------------------------------------------------------------------------- concurrency

WRITER = """
import sys
from pathlib import Path
from splitnet.records import RunRecorder
run_dir, name, stage = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = {"model": {"depth": 16, "widen": 8}, "optim": {"lr": 0.1}, "row": name}
with RunRecorder(run_dir, name, stage, "smoke", config, tags={"writer": name + "/" + stage}) as rec:
    for epoch in range(50):
        rec.log(epoch, {"loss": 1.0 / (epoch + 1), "acc": epoch / 50})
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "curve.txt").write_text("curve")
    (run_dir / "weights.txt").write_text(name)
    rec.finish({"test_error": 0.3}, ["weights.txt", "plots"])
"""

IMPORTER = """
import json, sys, time
from pathlib import Path
import mlflow  # import first, so the importers reach the barrier together
from splitnet.mlflow_import import TrackEntry, import_runs
uri, spec, go = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
entries = [TrackEntry(e["table"], e["row"], [Path(p) for p in e["paths"]]) for e in spec]
while not go.exists():
    time.sleep(0.01)
print(json.dumps(import_runs(uri, entries)))
"""


def run_all(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command at once, then wait for all of them."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    results = []
    for command, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return results


@pytest.mark.slow
def test_parallel_jobs_and_concurrent_importers_on_a_fresh_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    runs = tmp_path / "runs"
    table1 = ["baseline", "fc", "shallow", "deep", "hier"]
    table2 = ["baseline", "r5", "r6", "r7"]
    rows = sorted(set(table1 + table2))
    jobs = [[sys.executable, "-c", WRITER, str(runs / row / stage), row, stage] for row in rows for stage in STAGES]
    assert len(jobs) == 16
    for job in run_all(jobs):
        assert job.returncode == 0, job.stderr

    uri = sqlite_uri(tmp_path)
    go = tmp_path / "go"
    spec = {
        name: [
            {"table": e.table, "row": e.row, "paths": [str(p) for p in e.record_paths]}
            for e in entries_for(runs, name, table_rows)
        ]
        for name, table_rows in (("table1", table1), ("table2", table2))
    }
    overlapping = [spec["table1"], spec["table2"], spec["table1"] + spec["table2"]]
    importers = [
        subprocess.Popen(
            [sys.executable, "-c", IMPORTER, uri, json.dumps(s), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in overlapping
    ]
    time.sleep(1.0)  # let them start; they spin on the barrier after importing mlflow
    assert not (tmp_path / "store" / "mlflow.db").exists()
    go.touch()
    summaries = []
    for proc in importers:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "database is locked" not in err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(s["created"] for s in summaries) == 2 * (len(table1) + len(table2))
    assert sum(s["updated"] + s["missing"] for s in summaries) == 0

    db = tmp_path / "store" / "mlflow.db"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        leftovers = con.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'").fetchall()
        assert leftovers == []

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for the fluent mlflow.search_runs
    client = MlflowClient(uri)
    for name, table_rows in (("table1", table1), ("table2", table2)):
        found = client.search_experiments(filter_string=f"name = 'splitnet/{name}'")
        assert len(found) == 1
        frame = mlflow.search_runs(experiment_ids=[found[0].experiment_id])
        parents = frame[frame["tags.splitnet.kind"] == "row"]
        assert sorted(parents["tags.splitnet.row"]) == sorted(table_rows)
        children = frame[frame["tags.splitnet.kind"] == "stage"]
        assert len(children) == len(STAGES) * len(table_rows)
        parent_of = dict(zip(parents["run_id"], parents["tags.splitnet.row"]))
        pairs = sorted(zip(children["tags.mlflow.parentRunId"].map(parent_of), children["tags.splitnet.stage"]))
        assert pairs == sorted((row, stage) for row in table_rows for stage in STAGES)
        assert (parents["metrics.test_error"] == 0.3).all()
        for run_id in children["run_id"]:
            check_child(client, run_id)


def check_child(client, run_id: str) -> None:
    """A child run holds the whole record: curves, params, tags, artifacts, status."""
    run = client.get_run(run_id)
    row, stage = run.data.tags["splitnet.row"], run.data.tags["splitnet.stage"]
    assert run.info.run_name == f"{row}/{stage}"
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(50))
    assert run.data.metrics["test_error"] == 0.3
    assert run.data.params == {"model.depth": "16", "model.widen": "8", "optim.lr": "0.1", "row": row}
    tags = run.data.tags
    assert tags["writer"] == f"{row}/{stage}" and tags["splitnet.scale"] == "smoke"
    assert len(tags["splitnet.record_sha256"]) == 64
    assert "splitnet.host" in tags and "mlflow.source.git.commit" in tags
    top = {a.path for a in client.list_artifacts(run_id)}
    assert top == {"config.json", RUN_RECORD, "weights.txt", "plots"}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/curve.txt"]
