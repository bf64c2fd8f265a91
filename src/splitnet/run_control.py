"""How a training run reports progress and learns that it should stop (SIGTERM)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """A progress bar on a terminal, plain periodic lines otherwise (SLURM logs, CI)."""

    def __init__(self, total_steps: int) -> None:
        self.interactive = sys.stderr.isatty()
        self.total = total_steps
        self.start = time.perf_counter()

    def step(self, epoch: int, step: int, steps_per_epoch: int, loss: float | None) -> None:
        done = epoch * steps_per_epoch + step
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        if self.interactive:
            bar = "#" * int(30 * done / self.total)
            sys.stderr.write(f"\r[{bar:30s}] epoch {epoch + 1} step {step}/{steps_per_epoch} {rate:.1f} it/s")
            sys.stderr.flush()
        elif loss is not None:
            print(f"epoch {epoch + 1} step {step}/{steps_per_epoch} loss {loss:.4f} ({rate:.1f} it/s)", flush=True)

    def close(self) -> None:
        if self.interactive:
            sys.stderr.write("\n")


@contextmanager
def sigterm_flag() -> Iterator[dict[str, bool]]:
    """Turn SIGTERM into a flag checked between steps (only in the main thread)."""
    state = {"term": False}

    def handler(signum: int, frame: object) -> None:
        state["term"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler, no flag
        previous = None
    try:
        yield state
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
