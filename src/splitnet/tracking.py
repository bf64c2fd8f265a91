"""Run records written by pipeline stages, and their serial import into MLflow.

Training jobs never talk to MLflow. Each stage writes a small JSON *run record* next to its
outputs; the record is the source of truth. One serial step (:func:`import_runs`) later copies
the records into an MLflow store, idempotently. Nothing is shared between jobs while they run,
so this works for many local jobs and for SLURM jobs on nodes without network access, and it
avoids SQLite writers racing on a shared file system.

Record format (``<run_dir>/run.json``, written atomically on every update)::

    {
      "format":   "splitnet-run/1",
      "name":     "deep",               # experiment id (a paper-table row's configuration)
      "stage":    "learn_groups",       # pipeline stage that produced the run
      "scale":    "smoke",              # compute scale the config was resolved for
      "config":   {...},                # the stage's whole resolved config (nested)
      "tags":     {"splitnet.host": "...", ...},   # str -> str, see provenance_tags()
      "history":  [{"step": 0, "time": "<ISO>", "metrics": {"train_loss": 2.3, ...}}, ...],
      "metrics":  {"test_error": 0.31, ...},       # final metrics, str -> float
      "artifacts": ["groups.json", ...],           # paths relative to the run directory
      "status":   "RUNNING" | "FINISHED" | "FAILED" | "KILLED",
      "started":  "<ISO time>",
      "finished": "<ISO time>" | null
    }

History steps strictly increase. ``time`` (when the step was logged) only feeds MLflow's
metric timestamps; readers may ignore it.

MLflow layout made by :func:`import_runs`: one experiment per paper table
(``splitnet/<table>``), one parent run per table row (tag ``splitnet.row``), and one nested
child run per stage record (tags ``splitnet.stage`` and ``splitnet.record_sha256``).
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from splitnet.io import atomic_write_json

if TYPE_CHECKING:  # mlflow is an optional dependency, imported only by the importer
    from mlflow import MlflowClient
    from mlflow.entities import Run

RUN_RECORD = "run.json"
RECORD_FORMAT = "splitnet-run/1"
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")

# Tags through which the importer finds its own runs again.
TAG_KIND = "splitnet.kind"  # "row" (parent) or "stage" (child)
TAG_TABLE = "splitnet.table"
TAG_ROW = "splitnet.row"
TAG_STAGE = "splitnet.stage"
TAG_SHA = "splitnet.record_sha256"  # set last: a child without it is an interrupted import
TAG_PARENT = "mlflow.parentRunId"

_REQUIRED_KEYS = ("format", "name", "stage", "scale", "config", "tags", "history", "metrics",
                  "artifacts", "status", "started", "finished")
_COUNTS = ("created", "updated", "unchanged", "missing")
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- provenance


def _now_iso() -> str:
    """Current UTC time as an ISO-8601 string with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _iso_to_ms(stamp: str) -> int:
    """Milliseconds since the epoch, the unit MLflow uses for all times."""
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def _git(*args: str) -> str | None:
    """Output of a git command run in this package's checkout, or None without git/repo."""
    try:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _user() -> str:
    """Login name; containers without a passwd entry make getpass raise."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "")


def _package_version(name: str) -> str:
    """Installed version of a distribution without importing it (torch takes seconds)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def provenance_tags() -> dict[str, str]:
    """Where and from what code this process runs, as MLflow tags.

    MLflow sets its ``mlflow.source.*`` tags only in some contexts, so they are set
    explicitly. Values are empty strings when unknown (no git, not under SLURM or Snakemake).
    """
    commit = _git("rev-parse", "HEAD")
    # Only tracked files count: results and caches inside the checkout are untracked. Without
    # optional locks, parallel jobs do not contend for .git/index.lock or rewrite the index.
    changes = (_git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
               if commit else None)
    return {
        "mlflow.source.git.commit": commit or "",
        "splitnet.git_dirty": "" if changes is None else str(bool(changes)).lower(),
        "splitnet.host": socket.gethostname(),
        "splitnet.slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "splitnet.rule": os.environ.get("SPLITNET_RULE", ""),
        "splitnet.python": platform.python_version(),
        "splitnet.torch": _package_version("torch"),
        "mlflow.user": _user(),
    }


# --------------------------------------------------------------------------- run records


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a run record; raise ValueError if it is not one."""
    return _load_record(Path(path))[0]


def _load_record(path: Path) -> tuple[dict[str, Any], str]:
    """The record at ``path`` and the SHA-256 of its bytes (read once, so both agree)."""
    data = path.read_bytes()
    record = json.loads(data)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"{path}: not a {RECORD_FORMAT} run record")
    absent = [key for key in _REQUIRED_KEYS if key not in record]
    if absent:
        raise ValueError(f"{path}: run record lacks {', '.join(absent)}")
    if record["status"] not in STATUSES:
        raise ValueError(f"{path}: unknown status {record['status']!r}")
    return record, hashlib.sha256(data).hexdigest()


class RunRecorder:
    """Write one stage's run record, rewriting ``run.json`` atomically after each update.

    Use it as a context manager so that a crash leaves the record FAILED (or KILLED on
    Ctrl-C / SIGTERM turned into SystemExit) instead of RUNNING forever.

    With ``resume=True`` an existing record in ``run_dir`` is continued: its history and start
    time are kept. Steps logged after the checkpoint the job resumes from are stale; they are
    replaced when the job logs them again (see :meth:`log`), or dropped at once with
    :meth:`truncate_after`. Without an existing record ``resume`` starts a fresh one.
    """

    def __init__(self, run_dir: str | os.PathLike[str], name: str, stage: str, scale: str,
                 config: Mapping[str, Any], tags: Mapping[str, str] | None = None,
                 resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RUN_RECORD
        fresh_tags = provenance_tags() | {key: str(value) for key, value in (tags or {}).items()}
        # A JSON copy: later edits of the caller's dict cannot leak in, and a value that is not
        # JSON fails here rather than at the first epoch.
        config = json.loads(json.dumps(config))
        if resume and self.path.exists():
            self.record = self._continued(name, stage, scale, config, fresh_tags)
        else:
            self.record = {"format": RECORD_FORMAT, "name": name, "stage": stage, "scale": scale,
                           "config": config, "tags": fresh_tags, "history": [],
                           "metrics": {}, "artifacts": [], "status": "RUNNING",
                           "started": _now_iso(), "finished": None}
        self._write()

    def _continued(self, name: str, stage: str, scale: str, config: dict[str, Any],
                   tags: dict[str, str]) -> dict[str, Any]:
        """The existing record reopened for this job; it must describe the same run."""
        record = read_record(self.path)
        found = (record["name"], record["stage"], record["scale"])
        if found != (name, stage, scale):
            raise ValueError(f"{self.path} belongs to {found}, not {(name, stage, scale)}")
        # The current job's config and provenance describe how the run is being completed.
        record.update(config=config, tags=record["tags"] | tags, metrics={}, artifacts=[],
                      status="RUNNING", finished=None)
        return record

    @property
    def last_step(self) -> int | None:
        """Step of the newest history entry, None before the first one."""
        history = self.record["history"]
        return history[-1]["step"] if history else None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record one step (e.g. an epoch) of metrics.

        Logging a step again means the job went back to an earlier checkpoint, so the entries
        from that step on are replaced: the history never holds a step twice.
        """
        self._keep_until(step - 1)
        values = {key: float(value) for key, value in metrics.items()}
        self.record["history"].append({"step": int(step), "time": _now_iso(), "metrics": values})
        self._write()

    def truncate_after(self, step: int) -> None:
        """Forget the history after ``step`` (the checkpoint a resumed job restarts from)."""
        self._keep_until(step)
        self._write()

    def _keep_until(self, step: int) -> None:
        self.record["history"] = [h for h in self.record["history"] if h["step"] <= step]

    def finish(self, metrics: Mapping[str, float],
               artifacts: Sequence[str | os.PathLike[str]] = (),
               status: str = "FINISHED") -> None:
        """Record the final metrics, the output files and the terminal status."""
        if status not in STATUSES or status == "RUNNING":
            raise ValueError(f"terminal status expected, got {status!r}")
        self.record.update(metrics={key: float(value) for key, value in metrics.items()},
                           artifacts=[self._relative(path) for path in artifacts],
                           status=status, finished=_now_iso())
        self._write()

    def _relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the run directory; outputs elsewhere are not the run's.

        Accepted spellings: ``run_dir / name`` (however ``run_dir`` was given), an absolute
        path, or a path relative to the run directory.
        """
        target = Path(path)
        if not target.is_absolute() and not target.is_relative_to(self.run_dir):
            target = self.run_dir / target
        # Try the path as spelled and with symlinks resolved: callers may build it either way.
        for base, full in ((Path(os.path.abspath(self.run_dir)), Path(os.path.abspath(target))),
                           (self.run_dir.resolve(), target.resolve())):
            if full.is_relative_to(base):
                return full.relative_to(base).as_posix()
        raise ValueError(f"artifact {path} is outside {self.run_dir}")

    def _write(self) -> None:
        atomic_write_json(self.path, self.record)

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is not None and self.record["status"] == "RUNNING":
            killed = issubclass(kind, (KeyboardInterrupt, SystemExit))
            self.finish(self.record["metrics"], self.record["artifacts"],
                        status="KILLED" if killed else "FAILED")


# --------------------------------------------------------------------------- MLflow import


def default_tracking_uri(results_dir: str | os.PathLike[str]) -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store ``<results_dir>/mlflow.db`` (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


@dataclass
class TrackEntry:
    """One paper-table row and the run records of its stages, in pipeline order.

    The same record may belong to several entries (the baseline row of two tables).
    """

    table: str
    row: str
    record_paths: list[Path]
    experiment_title: str | None = None


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}``; non-string leaves (lists too) as JSON text."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def import_runs(tracking_uri: str, entries: Sequence[TrackEntry],
                lock_path: Path | None = None) -> dict[str, int]:
    """Copy run records into MLflow; safe to repeat, and to run from several processes at once.

    Returns counts over (entry, record) pairs: ``created`` (new child run), ``updated`` (the
    record changed, so its old child run was deleted and replaced), ``unchanged`` and
    ``missing`` (no record file yet; nothing is made up for it).

    Concurrent importers serialize on an exclusive lock held for the whole import:
    ``lock_path``, or ``<db>.lock`` for a SQLite URI. MLflow creates a SQLite schema on first
    use, and several processes doing that at once corrupt the database, so the schema is
    created first, under the lock. An http(s) store is locked only if ``lock_path`` is given;
    without it, concurrent importers could create a row's parent run twice.
    """
    tables = _group_by_table(entries)
    db = _sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock_path = lock_path or db.with_name(f"{db.name}.lock")
    counts = dict.fromkeys(_COUNTS, 0)
    # MLflow prints two "View run" links per finished run on http stores; stdout stays the
    # caller's (e.g. a summary printed by the CLI).
    with _exclusive_lock(lock_path), redirect_stdout(sys.stderr):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)  # creates or upgrades the schema now
        artifact_root = db.parent / "mlartifacts" if db is not None else None
        for experiment, table_entries in tables.items():
            experiment_id = _ensure_experiment(client, experiment, artifact_root)
            runs = _active_runs(client, experiment_id)
            for entry in table_entries:
                _import_row(client, experiment_id, entry, runs, counts)
    return counts


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


def _sqlite_path(uri: str) -> Path | None:
    """Database file of a ``sqlite:///`` URI (absolute), None for other stores."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("sqlite:"):
        raise ValueError(f"need a SQLite database file, got {uri!r}")
    return Path(path).absolute()


@contextmanager
def _exclusive_lock(path: Path | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (no-op for None); released even on errors."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _import_row(client: MlflowClient, experiment_id: str, entry: TrackEntry, runs: list[Run],
                counts: dict[str, int]) -> None:
    """Bring one row's parent run and its stage children in line with the records."""
    loaded: list[tuple[Path, dict[str, Any], str]] = []
    for path in map(Path, entry.record_paths):
        if path.is_file():
            loaded.append((path, *_load_record(path)))
        else:
            counts["missing"] += 1
    if not loaded:
        return
    stages = [record["stage"] for _, record, _ in loaded]
    if len(set(stages)) != len(stages):
        raise ValueError(f"row {entry.row!r} of {entry.table!r} has repeated stages {stages}")
    parent = _find_or_create_parent(client, experiment_id, entry, loaded, runs)
    for path, record, sha in loaded:
        outcome = _sync_child(client, experiment_id, parent.info.run_id, entry, path, record,
                              sha, runs)
        counts[outcome] += 1
    _sync_parent(client, parent, [record for _, record, _ in loaded],
                 complete=len(loaded) == len(entry.record_paths))


def _find_or_create_parent(client: MlflowClient, experiment_id: str, entry: TrackEntry,
                           loaded: list[tuple[Path, dict[str, Any], str]],
                           runs: list[Run]) -> Run:
    """The row's parent run; the oldest one if an unlocked import ever made two."""
    parents = [run for run in runs if run.data.tags.get(TAG_KIND) == "row"
               and run.data.tags.get(TAG_ROW) == entry.row]
    if parents:
        return min(parents, key=lambda run: (run.info.start_time, run.info.run_id))
    last = loaded[-1][1]
    tags = {TAG_KIND: "row", TAG_TABLE: entry.table, TAG_ROW: entry.row,
            "splitnet.name": last["name"], "splitnet.scale": last["scale"]}
    start = min(_iso_to_ms(record["started"]) for _, record, _ in loaded)
    return client.create_run(experiment_id, start_time=start, tags=tags, run_name=entry.row)


def _sync_child(client: MlflowClient, experiment_id: str, parent_id: str, entry: TrackEntry,
                path: Path, record: dict[str, Any], sha: str, runs: list[Run]) -> str:
    """Make the stage's child run match the record; return the count it falls under."""
    stage = record["stage"]
    existing = [run for run in runs if run.data.tags.get(TAG_PARENT) == parent_id
                and run.data.tags.get(TAG_STAGE) == stage]
    keep = next((run.info.run_id for run in existing if run.data.tags.get(TAG_SHA) == sha), None)
    if keep is None:
        _log_child(client, experiment_id, parent_id, entry, path, record, sha)
    # Replaced runs, and runs of an import that died before its last write, go to the bin.
    for run in existing:
        if run.info.run_id != keep:
            client.delete_run(run.info.run_id)
    if keep is not None:
        return "unchanged"
    return "updated" if existing else "created"


def _log_child(client: MlflowClient, experiment_id: str, parent_id: str, entry: TrackEntry,
               path: Path, record: dict[str, Any], sha: str) -> None:
    """Create the nested run of one stage record with everything the record holds."""
    identity = {TAG_PARENT: parent_id, TAG_KIND: "stage", TAG_STAGE: record["stage"]}
    run = client.create_run(experiment_id, start_time=_iso_to_ms(record["started"]),
                            run_name=f"{entry.row}/{record['stage']}", tags=identity)
    run_id = run.info.run_id
    # The importer's own tags win over same-named ones a stage may have recorded.
    tags = record["tags"] | identity | {
        TAG_TABLE: entry.table, TAG_ROW: entry.row, "splitnet.name": record["name"],
        "splitnet.scale": record["scale"], "splitnet.record_path": str(path.resolve())}
    _log_values(client, run_id, tags, record)
    client.log_dict(run_id, record["config"], "config.json")
    client.log_artifact(run_id, str(path))
    _log_record_artifacts(client, run_id, path.parent, record["artifacts"])
    if record["status"] != "RUNNING":
        finished = record["finished"]
        client.set_terminated(run_id, record["status"],
                              end_time=_iso_to_ms(finished) if finished else None)
    client.set_tag(run_id, TAG_SHA, sha)  # last: marks the import as complete


def _log_values(client: MlflowClient, run_id: str, tags: dict[str, Any],
                record: dict[str, Any]) -> None:
    """Tags, flattened config params and metric points, within MLflow's batch and size limits."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import (MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH,
                                         MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH)

    tag_list = [RunTag(key, str(value)[:MAX_TAG_VAL_LENGTH]) for key, value in tags.items()]
    params = [Param(key, value[:MAX_PARAM_VAL_LENGTH])
              for key, value in flatten_config(record["config"]).items()]
    metrics = [Metric(key, value, stamp, step)
               for key, value, stamp, step in _metric_points(record)]
    for chunk in _chunks(tag_list, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)
    for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)


def _metric_points(record: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) of the history, then the final metrics.

    Final metrics go at the last history step; one equal to the history value already
    there is not repeated (a metric point logged twice would be a duplicate row).
    """
    started = _iso_to_ms(record["started"])
    points: list[tuple[str, float, int, int]] = []
    seen: set[tuple[str, int, float]] = set()
    for entry in record["history"]:
        stamp = _iso_to_ms(entry["time"]) if entry.get("time") else started
        for key, value in entry["metrics"].items():
            points.append((key, float(value), stamp, int(entry["step"])))
            seen.add((key, int(entry["step"]), float(value)))
    last_step = record["history"][-1]["step"] if record["history"] else 0
    end = _iso_to_ms(record["finished"]) if record["finished"] else started
    for key, value in record["metrics"].items():
        if (key, last_step, float(value)) not in seen:
            points.append((key, float(value), end, last_step))
    return points


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of at most ``size`` items (MLflow's per-request limits)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _log_record_artifacts(client: MlflowClient, run_id: str, run_dir: Path,
                          artifacts: list[str]) -> None:
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


def _sync_parent(client: MlflowClient, parent: Run, records: list[dict[str, Any]],
                 complete: bool) -> None:
    """Give the parent the row's final metrics and an overall status.

    Metrics of later stages win on a name clash, so the row shows its ``evaluate`` results.
    Only values that differ from the parent's latest are logged, so re-imports add nothing.
    """
    from mlflow.entities import Metric

    wanted: dict[str, float] = {}
    for record in records:
        wanted.update({key: float(value) for key, value in record["metrics"].items()})
    have = parent.data.metrics
    now = int(time.time() * 1000)
    changed = [Metric(key, value, now, 0) for key, value in wanted.items()
               if not _same_float(have.get(key), value)]
    if changed:
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
    return status, max((_iso_to_ms(r["finished"]) for r in records if r["finished"]),
                       default=None)
