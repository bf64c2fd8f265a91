"""Finished stage results kept under the digest of their inputs, so no later run can lose them.

Snakemake deletes a job's declared outputs before it reruns the job, and a rerun may fail. So
when a training stage finishes, its outputs are also hard-linked (no extra disk) into
``<out_dir>/finished/<digest>/``; atomic replacement writes new inodes, so those links keep
the finished bytes whatever happens to the outputs later. A stage asked to resume with the
same digest restores them instead of training again: reuse bound to every input. The newest
``KEEP`` results per stage directory are kept.

A kept result is restored only if every file in it holds the bytes its kept run record says
the run wrote (the record's ``sha256``); one that does not (a file changed or swapped, or a
record without hashes) is discarded, and the stage computes the result again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .io import sha256_file
from .records import RUN_RECORD, SHA256, read_record

FINISHED_DIR = "finished"
COMPLETE = "COMPLETE"  # written last: a directory without it is a killed keep and is ignored
KEEP = 3


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        shutil.copy2(src, dst)


def _files(out_dir: Path, names: list[str]) -> list[Path]:
    """The named outputs, directories expanded to their files, relative to ``out_dir``."""
    found: list[Path] = []
    for name in names:
        path = out_dir / name
        if path.is_dir():
            found += sorted(
                p.relative_to(out_dir) for p in path.rglob("*") if p.is_file() and not p.name.endswith(".tmp")
            )
        elif path.is_file():
            found.append(Path(name))
    return found


def keep(out_dir: Path, digest: str, names: list[str]) -> Path:
    """Link the stage's finished outputs ``names`` (files or directories) under their digest."""
    store = out_dir / FINISHED_DIR
    final = store / digest
    if (final / COMPLETE).exists():
        shutil.rmtree(final)
    staging = store / f".{digest}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for relative in _files(out_dir, names):
        _link_or_copy(out_dir / relative, staging / relative)
    (staging / COMPLETE).write_text(digest + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    _prune(store)
    return final


def restore(out_dir: Path, digest: str) -> bool:
    """Put the outputs kept for ``digest`` back in place; False if there are none, or if they
    do not match their kept record (then they are discarded, and said so in one line)."""
    kept = out_dir / FINISHED_DIR / digest
    if not (kept / COMPLETE).exists():
        return False
    problem = _mismatch(kept)
    if problem is not None:
        print(f"{kept}: {problem}; discarding this kept result and computing it again", flush=True)
        shutil.rmtree(kept, ignore_errors=True)
        return False
    for directory in (d for d in kept.iterdir() if d.is_dir()):  # no stray files of another run
        shutil.rmtree(out_dir / directory.name, ignore_errors=True)
    for src in sorted(p for p in kept.rglob("*") if p.is_file() and p.name != COMPLETE):
        dst = out_dir / src.relative_to(kept)
        if dst.exists() and dst.samefile(src):
            continue  # already this file (a hard link): renaming a link onto it would do nothing, leaving tmp
        tmp = dst.with_name(f".{dst.name}.restore.tmp")
        tmp.unlink(missing_ok=True)
        _link_or_copy(src, tmp)
        os.replace(tmp, dst)
    os.utime(kept)  # the newest use, for pruning
    return True


def _mismatch(kept: Path) -> str | None:
    """What is wrong with a kept result against its kept run record; None if nothing."""
    try:
        recorded = read_record(kept / RUN_RECORD).get(SHA256) or {}
    except (OSError, ValueError) as err:
        return f"its run record is unreadable ({' '.join(str(err).split())})"
    files = {p.relative_to(kept).as_posix(): p for p in kept.rglob("*") if p.is_file()}
    for name, path in sorted(files.items()):
        if name in (COMPLETE, RUN_RECORD):
            continue
        if name not in recorded:
            return f"{name} has no sha256 in its run record"
        if sha256_file(path) != recorded[name]:
            return f"{name} does not match the sha256 in its run record"
    missing = sorted(set(recorded) - set(files))
    return f"{missing[0]} is missing" if missing else None


def _prune(store: Path) -> None:
    """Drop killed keeps and all but the ``KEEP`` most recently used results."""
    for leftover in store.glob(".*.staging"):
        shutil.rmtree(leftover, ignore_errors=True)
    done = sorted(
        (d for d in store.iterdir() if (d / COMPLETE).exists()), key=lambda d: d.stat().st_mtime, reverse=True
    )
    for old in done[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
