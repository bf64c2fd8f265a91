"""Run records: the JSON file each pipeline stage writes next to its outputs.

Training jobs never talk to MLflow. Each stage writes a small JSON *run record*; the record is
the source of truth, and one serial step (:mod:`splitnet.mlflow_import`) later copies records
into an MLflow store. Nothing is shared between jobs while they run, so this works for many
local jobs and for SLURM jobs on nodes without network access.

A stage directory holds up to two records:

* ``run.json`` (:data:`RUN_RECORD`): the last *finished* run, complete. Only
  :meth:`RunRecorder.finish` with status FINISHED replaces it, so a rerun that fails or is
  killed never costs the result of an earlier one.
* ``.run.inprogress.json`` (:data:`PROGRESS_RECORD`): the run in progress (RUNNING, its
  history so far) or the last one that ended FAILED/KILLED. A resumed job continues it. It is
  removed when the run finishes.

Both are written atomically on every update and share one format::

    {
      "format":   "splitnet-run/1",
      "name":     "deep",               # experiment id (a paper-table row's configuration)
      "stage":    "learn_groups",       # pipeline stage that produced the run
      "scale":    "smoke",              # compute scale the config was resolved for
      "config":   {...},                # the config sections the stage reads (nested)
      "tags":     {"splitnet.host": "...", ...},   # str -> str, see provenance_tags()
      "history":  [{"step": 0, "time": "<ISO>", "metrics": {"train_loss": 2.3, ...}}, ...],
      "metrics":  {"test_error": 0.31, ...},       # final metrics, str -> float
      "artifacts": ["groups.json", ...],           # paths relative to the run directory
      "sha256":   {"groups.json": "<hex>", ...},   # of every file the run wrote (artifacts + outputs)
      "status":   "RUNNING" | "FINISHED" | "FAILED" | "KILLED",
      "started":  "<ISO time>",
      "finished": "<ISO time>" | null
    }

History steps strictly increase. ``time`` (when the step was logged) only feeds MLflow's
metric timestamps; readers may ignore it.

``sha256`` is the producer's word on the bytes it wrote: a stage reading a model file checks it
against the record beside it (:func:`check_recorded`), and a finished result kept under its
digest is checked against its kept record before it is restored (finished.py). Records written
before this key existed lack it; they are read as before, with nothing to check against.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from splitnet.io import REWRITE, atomic_write_json, sha256_file

RUN_RECORD = "run.json"
PROGRESS_RECORD = ".run.inprogress.json"
RECORD_FORMAT = "splitnet-run/1"
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
SHA256 = "sha256"  # record key: relative path -> SHA-256 of the files the run wrote (not required: older records)

_REQUIRED_KEYS = (
    "format",
    "name",
    "stage",
    "scale",
    "config",
    "tags",
    "history",
    "metrics",
    "artifacts",
    "status",
    "started",
    "finished",
)


# --------------------------------------------------------------------------- provenance


def now_iso() -> str:
    """Current UTC time as an ISO-8601 string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _git(*args: str) -> str | None:
    """Output of a git command run in this package's checkout, or None without git/repo."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10, check=True
        )
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


def environment_digest() -> str:
    """SHA-256 of the sorted ``name==version`` of every installed distribution (the lines of
    ``pip freeze``, this package left out): two runs with the same digest ran the same versions;
    constraints.txt's digest (``workflow/scripts/freeze-constraints.sh``) names the environment
    the committed results were made with."""
    names = {
        dist.metadata["Name"]: dist.version for dist in importlib.metadata.distributions() if dist.metadata["Name"]
    }
    # what `pip freeze` lists: not this package, nor the packaging tools it leaves out
    skipped = {"splitnet", "pip", "setuptools", "wheel", "distribute"}
    return pins_digest(f"{name}=={version}" for name, version in names.items() if name.lower() not in skipped)


def pins_digest(pins: Iterable[str]) -> str:
    """SHA-256 of ``name==version`` pins, names normalised (PEP 503) and sorted."""
    lines = sorted(
        f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}" for name, _, version in (p.partition("==") for p in pins)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def provenance_tags() -> dict[str, str]:
    """Where and from what code this process runs, as MLflow tags.

    MLflow sets its ``mlflow.source.*`` tags only in some contexts, so they are set
    explicitly. Values are empty strings when unknown (no git, not under SLURM or Snakemake).
    """
    commit = _git("rev-parse", "HEAD")
    # Only tracked files count: results and caches inside the checkout are untracked. Without
    # optional locks, parallel jobs do not contend for .git/index.lock or rewrite the index.
    changes = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "mlflow.source.git.commit": commit or "",
        "splitnet.git_dirty": "" if changes is None else str(bool(changes)).lower(),
        "splitnet.host": socket.gethostname(),
        "splitnet.slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "splitnet.rule": os.environ.get("SPLITNET_RULE", ""),
        "splitnet.python": platform.python_version(),
        "splitnet.torch": _package_version("torch"),
        "splitnet.torchvision": _package_version("torchvision"),
        "splitnet.numpy": _package_version("numpy"),
        "splitnet.environment": environment_digest(),
        "mlflow.user": _user(),
    }


# --------------------------------------------------------------------------- reading


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a run record; raise ValueError if it is not one."""
    return load_record(Path(path))[0]


def load_record(path: Path) -> tuple[dict[str, Any], str]:
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


def check_recorded(path: Path) -> str:
    """The SHA-256 of the file ``path``, after checking it against the run record beside it.

    The record (``run.json`` in the same directory) is the producer's word on the bytes it
    wrote; a file that no longer holds them is a ValueError. A file without a record beside it,
    or whose record keeps no sha256 of it (written before records had one, or not by that run),
    has nothing to check against and is accepted as it is: the API and ``summary --model`` also
    read a user's own model files. A record beside it that cannot be read is an error.
    """
    sha = sha256_file(path)
    beside = path.parent / RUN_RECORD
    if not beside.is_file():
        return sha
    try:
        record = read_record(beside)
    except (OSError, ValueError) as err:
        detail = " ".join(str(err).split())
        raise ValueError(
            f"{path} cannot be checked: {beside} beside it is not a readable run record ({detail}); "
            f"delete both and rerun the stage that makes them"
        ) from None
    expected = (record.get(SHA256) or {}).get(path.name)
    if expected is not None and expected != sha:
        raise ValueError(
            f"{path} does not match the sha256 its stage recorded in {beside}: it changed after it was written; "
            f"{REWRITE}"
        )
    return sha


# --------------------------------------------------------------------------- writing


class RunRecorder:
    """Write one stage's run record: progress to :data:`PROGRESS_RECORD`, the finished run
    to :data:`RUN_RECORD`.

    Use it as a context manager so that a crash leaves the progress record FAILED (or KILLED
    on Ctrl-C / SIGTERM turned into SystemExit) instead of RUNNING forever; ``run.json`` of an
    earlier finished run stays as it was.

    With ``resume=True`` the progress record in ``run_dir`` is continued: its history and
    start time are kept. Steps logged after the checkpoint the job resumes from are stale;
    they are replaced when the job logs them again (see :meth:`log`), or dropped at once with
    :meth:`truncate_after`. Without a progress record ``resume`` starts a fresh one.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        name: str,
        stage: str,
        scale: str,
        config: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RUN_RECORD
        self.progress_path = self.run_dir / PROGRESS_RECORD
        fresh_tags = provenance_tags() | {key: str(value) for key, value in (tags or {}).items()}
        # A JSON copy: later edits of the caller's dict cannot leak in, and a value that is not
        # JSON fails here rather than at the first epoch.
        config = json.loads(json.dumps(config))
        if resume and self.progress_path.exists():
            self.record = self._continued(name, stage, scale, config, fresh_tags)
        else:
            self.record = {
                "format": RECORD_FORMAT,
                "name": name,
                "stage": stage,
                "scale": scale,
                "config": config,
                "tags": fresh_tags,
                "history": [],
                "metrics": {},
                "artifacts": [],
                SHA256: {},
                "status": "RUNNING",
                "started": now_iso(),
                "finished": None,
            }
        self._write_progress()

    def _continued(
        self, name: str, stage: str, scale: str, config: Mapping[str, Any], tags: dict[str, str]
    ) -> dict[str, Any]:
        """The progress record reopened for this job; it must describe the same run."""
        record = read_record(self.progress_path)
        found = (record["name"], record["stage"], record["scale"])
        if found != (name, stage, scale):
            raise ValueError(f"{self.progress_path} belongs to {found}, not {(name, stage, scale)}")
        # The current job's config and provenance describe how the run is being completed.
        record.update(
            config=config,
            tags=record["tags"] | tags,
            metrics={},
            artifacts=[],
            sha256={},
            status="RUNNING",
            finished=None,
        )
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
        self.record["history"].append({"step": int(step), "time": now_iso(), "metrics": values})
        self._write_progress()

    def truncate_after(self, step: int) -> None:
        """Forget the history after ``step`` (the checkpoint a resumed job restarts from)."""
        self._keep_until(step)
        self._write_progress()

    def _keep_until(self, step: int) -> None:
        self.record["history"] = [h for h in self.record["history"] if h["step"] <= step]

    def finish(
        self,
        metrics: Mapping[str, float],
        artifacts: Sequence[str | os.PathLike[str]] = (),
        status: str = "FINISHED",
        outputs: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        """Record the final metrics, the output files and the terminal status.

        The SHA-256 of every file among ``artifacts`` (imported into MLflow) and ``outputs``
        (further files the run wrote, e.g. the grouping's snapshots) is recorded, so readers can
        tell a file changed after the run wrote it.

        FINISHED replaces ``run.json`` and then drops the progress record; FAILED and KILLED
        stay in the progress record, next to the earlier finished run.
        """
        if status not in STATUSES or status == "RUNNING":
            raise ValueError(f"terminal status expected, got {status!r}")
        written = [self._relative(path) for path in [*artifacts, *outputs]]
        self.record.update(
            metrics={key: float(value) for key, value in metrics.items()},
            artifacts=written[: len(artifacts)],
            sha256={name: sha256_file(self.run_dir / name) for name in written if (self.run_dir / name).is_file()},
            status=status,
            finished=now_iso(),
        )
        if status != "FINISHED":
            self._write_progress()
            return
        atomic_write_json(self.path, self.record)
        # A kill right here leaves a stale progress record; a resumed job would only redo work.
        self.progress_path.unlink(missing_ok=True)

    def _relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the run directory; outputs elsewhere are not the run's.

        Accepted spellings: ``run_dir / name`` (however ``run_dir`` was given), an absolute
        path, or a path relative to the run directory.
        """
        target = Path(path)
        if not target.is_absolute() and not target.is_relative_to(self.run_dir):
            target = self.run_dir / target
        # Try the path as spelled and with symlinks resolved: callers may build it either way.
        for base, full in (
            (Path(os.path.abspath(self.run_dir)), Path(os.path.abspath(target))),
            (self.run_dir.resolve(), target.resolve()),
        ):
            if full.is_relative_to(base):
                return full.relative_to(base).as_posix()
        raise ValueError(f"artifact {path} is outside {self.run_dir}")

    def _write_progress(self) -> None:
        atomic_write_json(self.progress_path, self.record)

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is not None and self.record["status"] == "RUNNING":
            killed = issubclass(kind, (KeyboardInterrupt, SystemExit))
            self.finish(self.record["metrics"], self.record["artifacts"], status="KILLED" if killed else "FAILED")
