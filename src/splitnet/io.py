"""Atomic file writes, streamed file hashes and the one safe reader of torch files.

Every artefact the pipeline writes goes through the ``atomic_*`` helpers: the bytes are written
to a temporary file in the destination directory, flushed and fsync'ed, then moved over the
destination with :func:`os.replace` (atomic on POSIX within one file system). A crash or a full
disk therefore leaves either the old file or the new one at ``path``, never a truncated one,
and the temporary file is removed on failure.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for memory


# errno -> (what happened, what to do), for a failed read or write of a named path. Causes that
# only writing meets (a full disk, a read-only file system) say to write elsewhere: ``{out}``
# is the command's output flag (cli.main fills it in).
OS_ERROR_CAUSES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space there or choose another {out}"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or choose another {out}"),
    errno.EFBIG: ("file too large (a file-size limit: the file system's or `ulimit -f`)", "choose another {out}"),
    errno.EROFS: ("read-only file system", "choose another {out} on a writable file system"),
    errno.EACCES: ("permission denied", "fix its permissions or use another path"),
    errno.EPERM: ("operation not permitted", "fix its permissions or use another path"),
    errno.ELOOP: ("symlink loop (too many levels of symbolic links)", "fix or remove the link"),
    errno.ENOTDIR: ("not a directory (a part of the path is a file)", "fix the path"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.EISDIR: ("is a directory", "pass a file path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
}


def os_error_text(err: OSError, out: str = "output path") -> str:
    """``<cause>; <what to do>`` for ``err`` (its errno), without the path."""
    cause, todo = OS_ERROR_CAUSES.get(err.errno or 0, ((err.strerror or str(err)).lower(), "check the path"))
    return f"{cause}; {todo.format(out=out)}"


def path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be looked up, with what to do; None when it exists or is plainly missing
    (the caller knows what a missing input needs). A symlink loop, a file where a directory should
    be, a dangling symlink or a denied permission is not "missing" and must not be told so."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a symlink to {os.readlink(path)}, which does not exist; fix or remove the link"
        return None
    except NotADirectoryError as err:
        for parent in reversed(path.parents):  # from the root down: the first file on the way
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a directory; fix the path"
        return os_error_text(err)
    except OSError as err:
        return os_error_text(err)
    return None


def _naming(err: OSError, target: Path) -> OSError:
    """``err`` (errno and message kept) naming ``target``: the file the caller asked to write,
    not a temporary file or a directory on the way."""
    return type(err)(err.errno, err.strerror or str(err), str(target))


class _KeepOSError:
    """A file's ``write``/``flush`` that keeps the OSError they raise: torch.save reports a failed
    write as a RuntimeError without errno (``[enforce fail at inline_container.cc] unexpected pos``)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as err:
            self.error = err
            raise


@contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Yield a binary temp file that replaces ``path`` only if the ``with`` body succeeds.

    An OSError (full disk, read-only file system, ...) is raised naming ``path``; the temporary
    file is removed whatever failed.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise _naming(err, target) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise _naming(err, target) from err
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
        writer = _KeepOSError(handle)
        try:
            torch.save(obj, cast(IO[bytes], writer))  # torch.save calls only write and flush
        except RuntimeError as err:
            if writer.error is None:  # not a failed write: torch's own error
                raise
            raise writer.error from err


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


def csv_cell(value: object, digits: int | None = 4) -> str:
    """One CSV cell: None is empty, a float has ``digits`` decimals (``None``: its repr, the shortest
    text that reads back as the same float), anything else its ``str``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if digits is None else f"{value:.{digits}f}"
    return str(value)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, object]], digits: int | None = 4) -> str:
    """CSV text: the ``columns`` header, then each row's values in that order (see :func:`csv_cell`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([csv_cell(row[c], digits) for c in columns] for row in rows)
    return buf.getvalue()
