"""The SQLite file behind a ``sqlite:///`` MLflow store: created whole or not at all, and used
by one import at a time (an exclusive lock next to it)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient


def sqlite_path(uri: str) -> Path | None:
    """Database file of a ``sqlite:///`` URI (absolute), None for other stores."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("sqlite:"):
        raise ValueError(f"need a SQLite database file, got {uri!r}")
    return Path(path).absolute()


def create_sqlite_store(db: Path) -> None:
    """Make a missing database whole or not at all; call under the import lock.

    MLflow builds a new schema in many steps (tables, then migrations); a kill in between
    leaves a database it refuses to open. So the schema is built in a temporary file next to
    ``db`` and renamed into place. Temporary files found here belong to killed imports (only
    the lock holder creates them) and are removed, SQLite journals included.
    """
    prefix = f".{db.name}.creating-"
    for stale in db.parent.iterdir():
        if stale.name.startswith(prefix):
            stale.unlink(missing_ok=True)
    if db.exists():
        return
    # A journal whose database was deleted would be replayed into the new one.
    for suffix in ("-journal", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    temporary = db.with_name(f"{prefix}{os.getpid()}")
    try:
        MlflowClient(f"sqlite:///{temporary}").search_experiments(max_results=1)
        # SQLite has synced the committed schema; if a crash loses the rename, the next
        # import simply creates the database again.
        os.replace(temporary, db)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(path: Path | None) -> Iterator[None]:
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
