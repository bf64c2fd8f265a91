"""Serial, idempotent import of run records (:mod:`splitnet.records`) into an MLflow store.

The only module that imports mlflow. Layout made by :func:`import_runs`: one experiment per
paper table, one parent run per table row (tag ``splitnet.row``; params: the row's key settings,
metrics: its final results, for comparing rows in the runs table), and one nested child run per
stage record (tags ``splitnet.stage`` and ``splitnet.record_sha256``; params: the stage's whole
config; metrics: its history).

An import killed at any moment (``kill -9``) leaves a store the next import completes, each
run once: a new SQLite database appears only whole; every run is created together with its
identifying tags (one transaction), so the next import finds it; a parent is completed in place;
a child or 'files' run is marked complete (sha tag) by its last write, and one without the mark
is ended KILLED and moved to the bin before its replacement is made.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Project rule: no MLflow telemetry, whoever imports this module. Read when mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from splitnet.mlflow_store import create_sqlite_store, exclusive_lock, sqlite_path
from splitnet.records import RUN_RECORD, load_record
from splitnet.run_summaries import flatten_config, iso_to_ms, metric_points, row_params

# Tags through which the importer finds its own runs again.
TAG_KIND = "splitnet.kind"  # "row" (parent), "stage" (child) or "files" (a scale's summary files)
TAG_TABLE = "splitnet.table"
TAG_ROW = "splitnet.row"
TAG_STAGE = "splitnet.stage"
TAG_SHA = "splitnet.record_sha256"  # set last: a child without it is an interrupted import
TAG_PARENT = "mlflow.parentRunId"

_COUNTS = ("created", "updated", "unchanged", "missing")
_log = logging.getLogger(__name__)

Loaded = tuple[Path, dict[str, Any], str]  # record file, record, SHA-256 of its bytes


def default_tracking_uri(results_dir: str | os.PathLike[str]) -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store ``<results_dir>/mlflow.db``.

    The path is kept as given: a relative results directory gives a relative URI (resolved
    against the working directory), which can be written into committed files.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_dir) / 'mlflow.db'}"


@dataclass
class TrackEntry:
    """One paper-table row and the run records of its stages, in pipeline order.

    The same record may belong to several entries (the baseline row of two tables).
    """

    table: str
    row: str
    record_paths: list[Path]
    experiment_title: str | None = None


def import_runs(
    tracking_uri: str,
    entries: Sequence[TrackEntry],
    lock_path: Path | None = None,
    files: dict[str, Sequence[Path]] | None = None,
) -> dict[str, int]:
    """Copy run records into MLflow; safe to repeat, to kill, and to run from several processes.

    Returns counts over (entry, record) pairs: ``created`` (new child run), ``updated`` (the
    record changed, so its old child run was deleted and replaced), ``unchanged`` and
    ``missing`` (no record file yet; nothing is made up for it).

    Concurrent importers serialize on an exclusive lock held for the whole import:
    ``lock_path``, or ``<db>.lock`` for a SQLite URI, under which a new database is created
    (see :func:`_create_sqlite_store`). An http(s) store is locked only if ``lock_path`` is
    given; without it, concurrent importers could create a row's parent run twice (the next
    import deletes the extra one).

    ``files`` maps an MLflow experiment name to files (e.g. the claims table) logged as the
    artifacts of one run of that experiment, replaced when their bytes change.
    """
    tables = _group_by_table(entries)
    db = sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_path = lock_path or db.with_name(f"{db.name}.lock")
    counts = dict.fromkeys(_COUNTS, 0)
    # MLflow prints two "View run" links per finished run on http stores; stdout stays the
    # caller's (e.g. a summary printed by the CLI).
    with exclusive_lock(lock_path), redirect_stdout(sys.stderr):
        try:
            if db is not None:
                create_sqlite_store(db)
            client = MlflowClient(tracking_uri)
            artifact_root = db.parent / "mlartifacts" if db is not None else None
            for experiment, table_entries in tables.items():
                experiment_id = _ensure_experiment(client, experiment, artifact_root)
                runs = _active_runs(client, experiment_id)
                for entry in table_entries:
                    _import_row(client, experiment_id, entry, runs, counts)
            for experiment, paths in (files or {}).items():
                _sync_files(client, _ensure_experiment(client, experiment, artifact_root), experiment, paths)
        except MlflowException as err:  # unknown scheme, unreachable server, outdated schema
            raise ValueError(f"tracking store {tracking_uri}: {err.message}") from err
    return counts


def _sync_files(client: MlflowClient, experiment_id: str, name: str, paths: Sequence[Path]) -> None:
    """One run holding ``paths`` as artifacts; a new one (the old deleted) when any byte changed."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    sha = digest.hexdigest()
    existing = [run for run in _active_runs(client, experiment_id) if run.data.tags.get(TAG_KIND) == "files"]
    keep = next((run for run in existing if run.data.tags.get(TAG_SHA) == sha), None)
    for run in existing:
        if run is not keep:
            _discard(client, run)
    if keep is None:
        run = client.create_run(experiment_id, run_name=name.rsplit("/", 1)[-1], tags={TAG_KIND: "files"})
        for path in paths:
            client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id, "FINISHED")
        client.set_tag(run.info.run_id, TAG_SHA, sha)  # last: marks the upload as complete


def _discard(client: MlflowClient, run: Run) -> None:
    """Move a run to the bin, ended KILLED first if still RUNNING (an import killed before its
    last write, or a parent before its status): the bin never shows a run as running."""
    if run.info.status == "RUNNING":
        # A kill before the delete leaves an active KILLED run, which the next import discards.
        client.set_terminated(run.info.run_id, "KILLED")
    client.delete_run(run.info.run_id)


def _group_by_table(entries: Sequence[TrackEntry]) -> dict[str, list[TrackEntry]]:
    """Entries grouped by MLflow experiment name; rows must be unique within a table."""
    tables: dict[str, list[TrackEntry]] = {}
    title_of: dict[str, str | None] = {}
    for entry in entries:
        if title_of.setdefault(entry.table, entry.experiment_title) != entry.experiment_title:
            raise ValueError(f"table {entry.table!r} has two experiment titles")
        rows = tables.setdefault(entry.table, [])
        if any(other.row == entry.row for other in rows):
            raise ValueError(f"row {entry.row!r} is listed twice in table {entry.table!r}")
        rows.append(entry)
    names = {table: title_of[table] or f"splitnet/{table}" for table in tables}
    if len(set(names.values())) != len(names):
        raise ValueError(f"two tables share an MLflow experiment: {names}")
    return {names[table]: rows for table, rows in tables.items()}


def _ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Id of the experiment ``name``, created (or restored from the bin) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # Without an explicit location a SQLite store puts artifacts under ./mlruns of
        # whatever directory the importer happens to run in.
        location = None
        if artifact_root is not None:
            location = (artifact_root / re.sub(r"[^\w.-]+", "_", name)).as_uri()
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _active_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every active run of the experiment, following search pages."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _import_row(
    client: MlflowClient, experiment_id: str, entry: TrackEntry, runs: list[Run], counts: dict[str, int]
) -> None:
    """Bring one row's parent run and its stage children in line with the records."""
    loaded: list[Loaded] = []
    for path in map(Path, entry.record_paths):
        if path.is_file():
            loaded.append((path, *load_record(path)))
        else:
            counts["missing"] += 1
    if not loaded:
        return
    stages = [record["stage"] for _, record, _ in loaded]
    if len(set(stages)) != len(stages):
        raise ValueError(f"row {entry.row!r} of {entry.table!r} has repeated stages {stages}")
    parent = _row_parent(client, experiment_id, entry, loaded, runs)
    for path, record, sha in loaded:
        outcome = _sync_child(client, experiment_id, parent.info.run_id, entry, path, record, sha, runs)
        counts[outcome] += 1
    final = loaded[-1][1] if loaded[-1][0] == Path(entry.record_paths[-1]) else None
    _sync_parent(
        client, parent, final, [record for _, record, _ in loaded], complete=len(loaded) == len(entry.record_paths)
    )


def _row_parent(
    client: MlflowClient, experiment_id: str, entry: TrackEntry, loaded: list[Loaded], runs: list[Run]
) -> Run:
    """The row's one parent run, carrying the row's params.

    MLflow params cannot change, so a parent whose params contradict the records (the row was
    rerun with other settings) is replaced. Of several parents (an unlocked import ran
    concurrently) the oldest is kept. Parents go after their children, so a kill in between
    leaves no orphan.
    """
    wanted = row_params([(path, record) for path, record, _ in loaded])
    parents = sorted(
        (run for run in runs if run.data.tags.get(TAG_KIND) == "row" and run.data.tags.get(TAG_ROW) == entry.row),
        key=lambda run: (run.info.start_time, run.info.run_id),
    )
    keep = None
    for run in parents:
        have = run.data.params
        if keep is None and all(have[key] == value for key, value in wanted.items() if key in have):
            keep = run
            continue
        for child in runs:
            if child.data.tags.get(TAG_PARENT) == run.info.run_id:
                _discard(client, child)
        _discard(client, run)
    if keep is None:
        tags = {
            TAG_KIND: "row",
            TAG_TABLE: entry.table,
            TAG_ROW: entry.row,
            "splitnet.name": loaded[-1][1]["name"],
            "splitnet.scale": loaded[-1][1]["scale"],
        }
        start = min(iso_to_ms(record["started"]) for _, record, _ in loaded)
        # Tags go in with the run (one transaction): a killed import never leaves a parent the
        # next import cannot recognise.
        keep = client.create_run(experiment_id, start_time=start, tags=tags, run_name=entry.row)
    missing = [
        Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in sorted(wanted.items()) if key not in keep.data.params
    ]
    client.log_batch(keep.info.run_id, params=missing)  # the client splits batches to size
    return keep


def _sync_child(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    entry: TrackEntry,
    path: Path,
    record: dict[str, Any],
    sha: str,
    runs: list[Run],
) -> str:
    """Make the stage's child run match the record; return the count it falls under."""
    stage = record["stage"]
    existing = [
        run for run in runs if run.data.tags.get(TAG_PARENT) == parent_id and run.data.tags.get(TAG_STAGE) == stage
    ]
    keep = next((run for run in existing if run.data.tags.get(TAG_SHA) == sha), None)
    # Replaced runs, duplicates, and runs of an import killed before its last write go to the
    # bin before a new run is made, so the stage never has two active runs.
    for run in existing:
        if run is not keep:
            _discard(client, run)
    if keep is not None:
        return "unchanged"
    _log_child(client, experiment_id, parent_id, entry, path, record, sha)
    return "updated" if existing else "created"


def _log_child(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    entry: TrackEntry,
    path: Path,
    record: dict[str, Any],
    sha: str,
) -> None:
    """Create the nested run of one stage record with everything the record holds."""
    identity = {TAG_PARENT: parent_id, TAG_KIND: "stage", TAG_STAGE: record["stage"]}
    run = client.create_run(
        experiment_id, start_time=iso_to_ms(record["started"]), run_name=f"{entry.row}/{record['stage']}", tags=identity
    )
    run_id = run.info.run_id
    # The importer's own tags win over same-named ones a stage may have recorded.
    tags = (
        record["tags"]
        | identity
        | {
            TAG_TABLE: entry.table,
            TAG_ROW: entry.row,
            "splitnet.name": record["name"],
            "splitnet.scale": record["scale"],
            "splitnet.record_path": str(path.resolve()),
        }
    )
    tag_list = [RunTag(key, str(value)[:MAX_TAG_VAL_LENGTH]) for key, value in tags.items()]
    params = [Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in flatten_config(record["config"]).items()]
    metrics = [Metric(key, value, stamp, step) for key, value, stamp, step in metric_points(record)]
    client.log_batch(run_id, metrics=metrics, params=params, tags=tag_list)
    client.log_dict(run_id, record["config"], "config.json")
    client.log_artifact(run_id, str(path))
    _log_record_artifacts(client, run_id, path.parent, record["artifacts"])
    if record["status"] != "RUNNING":
        finished = record["finished"]
        client.set_terminated(run_id, record["status"], end_time=iso_to_ms(finished) if finished else None)
    client.set_tag(run_id, TAG_SHA, sha)  # last: marks the import as complete


def _log_record_artifacts(client: MlflowClient, run_id: str, run_dir: Path, artifacts: list[str]) -> None:
    """Upload the record's output files and folders that exist, under their relative path."""
    for relative in artifacts:
        source = run_dir / relative
        folder = Path(relative).parent.as_posix()
        if source.is_file():
            client.log_artifact(run_id, str(source), None if folder == "." else folder)
        elif source.is_dir():
            client.log_artifacts(run_id, str(source), relative)
        else:
            _log.warning("artifact %s listed in %s does not exist", source, run_dir / RUN_RECORD)


def _sync_parent(
    client: MlflowClient, parent: Run, final: dict[str, Any] | None, records: list[dict[str, Any]], complete: bool
) -> None:
    """Give the parent the final metrics of the row's last stage, and an overall status.

    Only values that differ from the parent's latest are logged, so re-imports add nothing.
    """
    if final is not None:
        stamp = iso_to_ms(final["finished"] or final["started"])
        have = parent.data.metrics
        changed = [
            Metric(key, float(value), stamp, 0)
            for key, value in final["metrics"].items()
            if not _same_float(have.get(key), float(value))
        ]
        client.log_batch(parent.info.run_id, metrics=changed)
    status, end = _row_status(records, complete)
    if status == parent.info.status and end in (None, parent.info.end_time):
        return
    if status in ("RUNNING", "SCHEDULED"):
        client.update_run(parent.info.run_id, status=status)
    else:
        client.set_terminated(parent.info.run_id, status, end_time=end)


def _same_float(old: float | None, new: float) -> bool:
    """Equality that treats NaN as equal to NaN."""
    return old is not None and (old == new or (math.isnan(old) and math.isnan(new)))


def _row_status(records: list[dict[str, Any]], complete: bool) -> tuple[str, int | None]:
    """A row fails if a stage failed, runs while one runs, waits (SCHEDULED) for missing ones."""
    statuses = {record["status"] for record in records}
    worst = [status for status in ("FAILED", "KILLED", "RUNNING") if status in statuses]
    status = worst[0] if worst else ("FINISHED" if complete else "SCHEDULED")
    if status in ("RUNNING", "SCHEDULED"):
        return status, None
    return status, max((iso_to_ms(r["finished"]) for r in records if r["finished"]), default=None)
