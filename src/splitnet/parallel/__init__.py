"""Model parallelization of split networks (the paper's second claim), on torch.distributed.

* ``ParallelSplit``: one process per worker (gloo on CPU, NCCL on GPUs); each worker runs the
  trunk and its own branches, logits are gathered in class order; finetuning sums the
  gradients of replicated layers (supplement §6).  Launch with ``torchrun`` or ``srun``.
* ``StreamSplit``: one GPU, one CUDA stream per branch.
* ``launch``: N local CPU workers for tests and benchmarks, failing loudly.

See docs/parallel.md; ``python -m splitnet.parallel --help`` for the commands.
"""

from .placement import Placement, branch_nodes, own_flops, place
from .runner import ParallelSplit, class_order
from .streams import StreamSplit
from .workers import Worker, WorkerError, WorkerFailure, barrier, collective, init_from_env, launch

__all__ = [
    "ParallelSplit",
    "Placement",
    "StreamSplit",
    "Worker",
    "WorkerError",
    "WorkerFailure",
    "barrier",
    "branch_nodes",
    "class_order",
    "collective",
    "init_from_env",
    "launch",
    "own_flops",
    "place",
]
