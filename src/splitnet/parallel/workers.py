"""Worker processes: join the process group from the launcher's environment, fail loudly.

One process per worker.  ``init_from_env`` reads what ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or, under ``srun``, SLURM's
``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (``MASTER_ADDR`` / ``MASTER_PORT`` must
then be exported by the job script).  Collectives use NCCL when every worker has a GPU of its
own (checked, not assumed), gloo otherwise (CPU workers, or several workers sharing one GPU).

A worker that dies or hangs must never hang the others: every collective has the process
group's timeout, and ``collective`` turns the backend's error into a ``WorkerFailure`` that
says what happened.  ``launch`` runs a function on N local workers (tests, benchmarks) and
raises ``WorkerError`` naming the worker that failed, died or hung.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import re
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEFAULT_TIMEOUT_S = 300.0


class WorkerFailure(RuntimeError):
    """A collective failed on this worker: another worker died, hangs, or disagrees."""


class WorkerError(RuntimeError):
    """``launch``: a worker raised, died or gave no result in time (all workers are stopped)."""


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str  # what its collectives use: "nccl" (a GPU of its own) or "gloo" (host memory)
    timeout_s: float
    group: Any = None  # the process group of all workers with that backend (None: the default, gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collectives take their tensors: gloo moves host memory, NCCL the GPU's."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def _env_int(*names: str) -> int | None:
    """The first of ``names`` that is set; its leading integer (SLURM writes e.g. ``4(x2)``)."""
    for name in names:
        found = re.match(r"\d+", os.environ.get(name, ""))
        if found:
            return int(found.group())
    return None


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "auto") -> Worker:
    """Join the default process group as the launcher (torchrun, srun, ``launch``) describes it.

    ``device`` as the engine's setting: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``
    (worker ``LOCAL_RANK`` takes GPU ``LOCAL_RANK`` modulo the GPUs present).
    """
    rank = _env_int("RANK", "SLURM_PROCID")
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    if rank is None or world is None:
        raise ValueError(
            "no worker environment: start with `torchrun --nproc-per-node N ...` or `srun` "
            "(RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS unset)"
        )
    if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
        raise ValueError(
            "MASTER_ADDR and MASTER_PORT must be set (torchrun sets them; under srun export the "
            "first node's name and a free port, see docs/parallel.md)"
        )
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)  # so that device "cuda" (engine, data) means this worker's GPU
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    # Every worker needs a GPU of its own (two on one GPU only share its time, and NCCL refuses
    # them); asked through gloo, since neither the GPU count (srun --gpus-per-task shows each
    # worker one GPU) nor the launcher tells.
    if use_cuda:
        if not _own_gpus(dev, world):
            dist.destroy_process_group()
            raise ValueError(
                f"{world} workers but fewer GPUs: two workers would share one; start one worker per GPU "
                "(torchrun --nproc-per-node <GPUs>) or finetune in one process (finetune_workers: 1)"
            )
        return Worker(
            rank,
            world,
            local_rank,
            dev,
            "nccl",
            timeout_s,
            dist.new_group(backend="nccl", timeout=timedelta(seconds=timeout_s)),
        )
    return Worker(rank, world, local_rank, dev, "gloo", timeout_s)


def _own_gpus(device: torch.device, world: int) -> bool:
    """Whether every worker's (host, GPU) differs from every other's."""
    name = f"{socket.gethostname()}/{torch.cuda.get_device_properties(device).uuid}"
    mine = torch.tensor([int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little", signed=True)])
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    return len({int(t) for t in everyone}) == world


def barrier(worker: Worker) -> None:
    """All workers meet here (through the backend their collectives use)."""
    token = torch.zeros(1, device=worker.comm_device)
    with collective(worker, "waiting for the other workers"):
        dist.all_reduce(token, group=worker.group)


@contextmanager
def collective(worker: Worker, what: str) -> Iterator[None]:
    """Run collectives; a backend error (lost peer, timeout) becomes a ``WorkerFailure`` saying so."""
    try:
        yield
    except RuntimeError as err:  # DistBackendError and gloo/NCCL errors are RuntimeErrors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WorkerFailure(
            f"worker {worker.rank} of {worker.world}: {what} failed: another worker died, hangs or disagrees "
            f"(collective timeout {worker.timeout_s:g} s); the other workers' logs name the cause. Backend: {first}"
        ) from err


# ----------------------------------------------------------------------------- local launcher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    fn: Callable[..., Any], rank: int, world: int, port: int, timeout_s: float, device: str, args: tuple, results: Any
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    try:
        worker = init_from_env(timeout_s, device)
        value = fn(worker, *args)
        buffer = io.BytesIO()
        # Bytes, not tensors: a tensor sent through a queue lives in this process's shared
        # memory, which is gone once the process exits.
        torch.save(value, buffer)
        results.put((rank, True, buffer.getvalue()))
    except BaseException as err:
        results.put((rank, False, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(
    fn: Callable[..., Any],
    world: int,
    args: tuple = (),
    timeout_s: float = 120.0,
    collective_timeout_s: float = 30.0,
    device: str = "cpu",
) -> list[Any]:
    """Run ``fn(worker, *args)`` on ``world`` local workers; their return values by rank.

    ``device`` as for ``init_from_env``: ``cpu`` (gloo), or ``cuda`` (worker i on GPU i modulo
    the GPUs present; NCCL when there is a GPU per worker).
    ``fn`` must be importable (a module-level function).  Raises ``WorkerError`` as soon as a
    worker raises or exits without a result, or when ``timeout_s`` passes without every result;
    the remaining workers are then terminated.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world, port, collective_timeout_s, device, args, results), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    values: dict[int, bytes] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < world and not errors:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    break  # a worker died without a report
                if time.monotonic() > deadline:
                    missing = [r for r in range(world) if r not in values]
                    raise WorkerError(f"workers {missing} gave no result within {timeout_s:g} s: hung") from None
                continue
            if ok:
                values[rank] = payload
            else:
                errors[rank] = f"worker {rank} failed: {payload}"
        if len(values) < world:
            # The whole story: the other side of a failed collective reports within a moment.
            errors.update(_drain(results, 1.0))
            for r, p in enumerate(procs):
                if r in errors or r in values:
                    continue
                errors[r] = (
                    f"worker {r} was still running, stopped"
                    if p.exitcode is None
                    else f"worker {r} died (exit code {p.exitcode}) without a result"
                )
            raise WorkerError("; ".join(errors[r] for r in sorted(errors)))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return [torch.load(io.BytesIO(values[r]), weights_only=False) for r in range(world)]


def _drain(results: Any, wait_s: float) -> dict[int, str]:
    """Failure reports that arrive within ``wait_s``."""
    found = {}
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            rank, ok, payload = results.get(timeout=0.1)
        except queue.Empty:
            continue
        if not ok:
            found[rank] = f"worker {rank} failed: {payload}"
    return found
