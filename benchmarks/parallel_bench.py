"""Shared pieces of the branch-parallel benchmarks (parallel_inference.py, parallel_finetune.py)."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from splitnet.branches import SplitWideResNet
from splitnet.model import WideResNet, wide_resnet
from splitnet.parallel import Worker, barrier
from splitnet.partition import balanced_partition
from splitnet.spec import SplitSpec
from splitnet.split import build_split_network
from splitnet.topology import build_topology

SPLITS = {"shallow": "1-2-2", "deep": "2-2-2", "hier": "2-4-4"}


def build_models(arch: str, num_classes: int, splits: list[str]) -> tuple[WideResNet, dict[str, SplitWideResNet]]:
    """The dense WRN and its balanced splits; the same weights in every process (seed 0)."""
    torch.manual_seed(0)
    dense = wide_resnet(arch, num_classes=num_classes)
    models = {}
    for name in splits:
        top = build_topology(dense.plan, SplitSpec.parse(SPLITS[name]))
        models[name] = build_split_network(top, balanced_partition(top), "shared", "preact", dense=dense)
    return dense, models


def pin(cores: set[int], threads: int) -> None:
    """Every thread of this process on ``cores``, and ``threads`` intra-op threads.

    All threads, not only the caller: OpenMP's pool threads keep the affinity they were made
    with, so pinning the main thread alone would leave them where they were.
    """
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cores)
    torch.set_num_threads(threads)


def sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def ms_per_call(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return 1000 * (time.perf_counter() - start) / repeats


class Recorder:
    """Timings by (key, mode) over interleaved rounds: worker 0 alone, or all workers together.

    ``alone`` runs on worker 0 while the others wait at a barrier (on CPU worker 0 may widen
    itself to every core for it); ``together`` starts all workers at a barrier.
    """

    def __init__(self, worker: Worker, sync: Callable[[], None], warmup: int) -> None:
        self.worker, self.sync, self.warmup = worker, sync, warmup
        self.ms: dict[tuple[str, str], list[float]] = {}

    def _add(self, key: str, mode: str, value: float) -> None:
        self.ms.setdefault((key, mode), []).append(value)

    def alone(
        self,
        key: str,
        mode: str,
        fn: Callable[[], object],
        repeats: int,
        setup: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        if self.worker.is_main:
            with setup():
                self._add(key, mode, ms_per_call(fn, self.warmup, repeats, self.sync))
        barrier(self.worker)

    def together(self, key: str, mode: str, fn: Callable[[], object], repeats: int) -> None:
        barrier(self.worker)
        value = ms_per_call(fn, self.warmup, repeats, self.sync)
        if self.worker.is_main:
            self._add(key, mode, value)

    def median(self, key: str, mode: str) -> float:
        return statistics.median(self.ms[(key, mode)])

    def raw(self, key: str) -> dict[str, list[float]]:
        return {mode: [round(v, 3) for v in values] for (k, mode), values in self.ms.items() if k == key}


@contextlib.contextmanager
def every_core(cores: set[int], mine: set[int]) -> Iterator[None]:
    """Worker 0 on all cores with one thread per core, then back on its own core."""
    pin(cores, len(cores))
    try:
        yield
    finally:
        pin(mine, 1)


@dataclass
class WorkerSetup:
    """What every parallel benchmark worker starts from: its device, its pinned core, the models."""

    device: torch.device
    cpu: bool
    cores: list[int]  # every core this process may use
    mine: set[int]  # the one core this worker is pinned to
    fmt: torch.memory_format
    dense: WideResNet
    splits: dict[str, SplitWideResNet]
    shape: tuple[int, int, int]


def worker_setup(
    worker: Worker, arch: str, num_classes: int, splits: list[str], image_size: int, channels_last: bool
) -> WorkerSetup:
    """Pin a CPU worker to one core (one thread) and build the dense and split networks."""
    cpu = worker.device.type == "cpu"
    cores = sorted(os.sched_getaffinity(0))
    mine = {cores[worker.rank % len(cores)]}
    if cpu:
        pin(mine, 1)
    dense, split_models = build_models(arch, num_classes, splits)
    return WorkerSetup(
        worker.device,
        cpu,
        cores,
        mine,
        torch.channels_last if channels_last else torch.contiguous_format,
        dense,
        split_models,
        (3, image_size, image_size),
    )
