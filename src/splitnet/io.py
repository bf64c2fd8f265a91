"""Atomic file writes, streamed file hashes and the one safe reader of torch files.

Every artefact the pipeline writes goes through the ``atomic_*`` helpers: the bytes are written
to a temporary file in the destination directory, flushed and fsync'ed, then moved over the
destination with :func:`os.replace` (atomic on POSIX within one file system). A crash or a full
disk therefore leaves either the old file or the new one at ``path``, never a truncated one,
and the temporary file is removed on failure.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for memory


@contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary temp file that replaces ``path`` only if the ``with`` body succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes left under ``directory``.

    Only for a directory with a single writer (a stage's own output directory), called before
    that writer starts: no temporary file there can belong to a live write.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    stale = [p for p in root.rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; some platforms cannot open directories, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating parent directories."""
    with _atomic_file(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (sorted keys, indent 2, trailing newline) atomically.

    Sorted keys and a fixed layout make the file byte-stable, so its hash only changes when
    its content does.
    """
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    import torch  # imported here so tracking/IO users do not pay torch's import time

    with _atomic_file(path) as handle:
        torch.save(obj, handle)


REWRITE = "delete it and rerun the stage that makes it"


def load_torch_file(
    path: str | os.PathLike[str], data: bytes | None = None, map_location: Any = "cpu", remedy: str = REWRITE
) -> Any:
    """``torch.load(weights_only=True)`` of a file this project wrote (``data``: its bytes, already read).

    Every torch file the project reads comes through here. Unsafe content (a pickle that would
    run code or build foreign objects) is refused, and that or any other unreadable content is a
    ValueError of one line naming the file and saying what to do (``remedy``); a missing or
    unreadable path stays an OSError.
    """
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(data) if data is not None else path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch raises many types (with long texts) for a file it cannot read
        why = "refused unsafe content" if isinstance(err, pickle.UnpicklingError) else type(err).__name__
        raise ValueError(f"{path}: not written by this project or damaged ({why}); {remedy}") from None


def _hash_file(path: str | os.PathLike[str], make: Callable[[], Any]) -> str:
    """Hex digest of a file, read in chunks so large archives do not fill memory."""
    digest = make()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of the file at ``path``."""
    return _hash_file(path, hashlib.sha256)


def md5_file(path: str | os.PathLike[str]) -> str:
    """MD5 hex digest of the file at ``path`` (used only to match published checksums)."""
    return _hash_file(path, lambda: hashlib.md5(usedforsecurity=False))
