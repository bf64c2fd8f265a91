"""Branch-parallel split network: every worker runs the trunk and its own branches.

Forward: every worker needs the trunk's output for the whole batch.  In training each worker
computes it (replicated: BN uses the whole batch's statistics); at inference each computes
its share of the images and the shares are gathered.  Then each worker runs only the branches
on the paths to its leaves (``placement.place``), and all workers gather the leaf logits, so
every worker ends with the logits of the whole network in class order.

Training (§6 of the supplement, model-parallel finetuning): every worker computes the same
loss from the same gathered logits.  The gather's backward therefore keeps each worker's own
columns of the (identical) logit gradient: no communication, and each worker backpropagates
exactly its branches' share of the loss.  A layer held by several workers (the trunk; a
branch replicated under a hierarchical split) thus gets a *partial* gradient on each; the
exact gradient is their sum (the supplement says "averaged": the same up to the scale its
per-worker losses had), one flat all-reduce per group of holders as soon as the last of the
group's gradients is accumulated.  Any training loop works unchanged (``engine.train``),
with one backward per optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from ..branches import HeadBranch, SplitWideResNet, StageBranch
from .placement import BranchNode, Placement, branch_nodes, own_flops, place
from .workers import Worker, WorkerFailure, collective


def class_order(split: SplitWideResNet, logits: torch.Tensor) -> torch.Tensor:
    """Leaf logits (depth-first columns) -> the original class order, as ``SplitWideResNet.forward``
    does: a class produced by several leaves (overlap) gets the mean of its copies."""
    if not split.duplicated:
        return logits.index_select(1, split.inverse)
    summed = logits.new_zeros(logits.shape[0], split.num_classes).index_add(1, split.class_index, logits)
    return summed / split.class_counts


def _all_gather_cat(
    t: torch.Tensor, sizes: list[int] | tuple[int, ...], dim: int, worker: Worker, what: str
) -> torch.Tensor:
    """Every worker's ``t`` (``sizes[r]`` long along ``dim`` on worker r) concatenated along ``dim``."""
    # all_gather moves equal shapes: pad every worker's piece to the longest
    padded = torch.nn.functional.pad(t, [0, 0] * (t.dim() - 1 - dim) + [0, max(sizes) - t.shape[dim]])
    # gloo moves float32 host tensors (bf16 -> float32 -> bf16 is lossless)
    send = (padded if worker.backend == "nccl" else padded.float().cpu()).contiguous()
    pieces = [torch.empty_like(send) for _ in sizes]
    with collective(worker, what):
        dist.all_gather(pieces, send, group=worker.group)
    out = torch.cat([p.narrow(dim, 0, n) for p, n in zip(pieces, sizes)], dim=dim).to(t.device, t.dtype)
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class _GatherColumns(torch.autograd.Function):
    """All-gather every worker's logit columns; backward keeps this worker's own columns.

    Valid because every worker computes the same loss from the same gathered logits, so the
    gradient of the gathered tensor is the same everywhere (``torch.distributed.nn``'s
    all_gather would instead sum the W identical copies with a reduce-scatter).
    """

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, widths: tuple[int, ...], rank: int, worker: Worker) -> torch.Tensor:
        ctx.start = sum(widths[:rank])
        ctx.stop = ctx.start + widths[rank]
        return _all_gather_cat(local, widths, 1, worker, "gathering the logits")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        return grad[:, ctx.start : ctx.stop], None, None, None


def _overlaps(node: BranchNode, run: range) -> bool:
    return node.leaves.start < run.stop and run.start < node.leaves.stop


def _pruned(node: BranchNode, by_module: dict[int, BranchNode], keep: range) -> nn.Module:
    """``node`` with only the children that lead to leaves in ``keep`` (modules shared, not copied)."""
    m = node.module
    if not isinstance(m, StageBranch):
        return m
    children = [by_module[id(c)] for c in m.branches]
    return StageBranch(
        m.select, m.units, m.final_bn, [_pruned(c, by_module, keep) for c in children if _overlaps(c, keep)]
    )


def _grad(p: nn.Parameter) -> torch.Tensor:
    assert p.grad is not None  # read once the group's post-accumulate-grad hooks have all run
    return p.grad


def _own_parameters(node: BranchNode) -> list[nn.Parameter]:
    return [p for name, p in node.module.named_parameters() if not name.startswith("branches.") and p.requires_grad]


class ParallelSplit(nn.Module):
    """A ``SplitWideResNet`` whose branches run on the workers of the default process group.

    ``split`` is the whole network, identical on every worker (e.g. loaded from one model
    file); it stays a submodule, so state dicts and checkpoints have the sequential model's
    keys, but each worker only computes and updates the layers it holds.  ``gather_branches``
    brings every worker's finetuned branches into each copy of ``split``.
    """

    def __init__(self, split: SplitWideResNet, input_shape: tuple[int, int, int], worker: Worker) -> None:
        super().__init__()
        self.split = split
        self.worker = worker
        self.nodes = branch_nodes(split)
        self.placement: Placement = place(self.nodes, own_flops(split, self.nodes, input_shape), worker.world)
        mine = self.placement.ranges[worker.rank]
        by_module = {id(n.module): n for n in self.nodes}
        # A plain tuple: the pruned tree shares split's modules and must not register them twice.
        self.local = tuple(_pruned(n, by_module, mine) for n in self.nodes if n.depth == 0 and _overlaps(n, mine))
        self.widths = tuple(
            sum(cast(HeadBranch, n.module).fc.out_features for n in self.nodes if n.is_leaf and n.leaves.start in run)
            for run in self.placement.ranges
        )
        self._groups = self._holder_groups()
        # Gradients still to come per group in this backward; at 0 the group is summed.
        self._pending = {i: len(params) for i, (_, params) in enumerate(self._groups)}
        for i, (_, params) in enumerate(self._groups):
            for p in params:
                p.register_post_accumulate_grad_hook(self._grad_ready(i))
        self.check_replicas()

    # --------------------------------------------------------------------------- holders

    def _holder_groups(self) -> list[tuple[Any, list[nn.Parameter]]]:
        """(process group, parameters this worker holds) for every set of >= 2 holders it is in."""
        by_holders: dict[tuple[int, ...], list[nn.Parameter]] = {
            tuple(range(self.worker.world)): [p for p in self.split.trunk.parameters() if p.requires_grad]
        }
        for node in self.nodes:
            by_holders.setdefault(self.placement.holders(node), []).extend(_own_parameters(node))
        groups = []
        for holders in sorted(by_holders):  # the same order on every worker: new_group is collective
            if len(holders) < 2:
                continue
            group = (
                self.worker.group
                if len(holders) == self.worker.world
                else dist.new_group(list(holders), backend=self.worker.backend)
            )
            if self.worker.rank in holders and by_holders[holders]:
                groups.append((group, by_holders[holders]))
        return groups

    def _grad_ready(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(_: torch.Tensor) -> None:
            self._pending[index] -= 1
            if self._pending[index] == 0:
                self._sum_gradients(index)
                self._pending[index] = len(self._groups[index][1])

        return hook

    def _sum_gradients(self, index: int) -> None:
        group, params = self._groups[index]
        flat = torch.cat([_grad(p).reshape(-1) for p in params])
        buffer = flat.to(self.worker.comm_device)
        with collective(self.worker, "summing the gradients of replicated layers"):
            dist.all_reduce(buffer, group=group)
        flat = buffer.to(flat.device)
        offset = 0
        for p in params:
            grad = _grad(p)
            grad.copy_(flat[offset : offset + p.numel()].view_as(grad))
            offset += p.numel()

    # --------------------------------------------------------------------------- running

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and any(self._pending[i] != len(p) for i, (_, p) in enumerate(self._groups)):
            raise RuntimeError(
                f"worker {self.worker.rank}: the last backward did not reach every replicated "
                "layer, so their gradients were never summed (one backward per step, over the "
                "whole loss)"
            )
        return self.branches(self.trunk(x))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output for the whole batch.

        At inference each worker runs the trunk on its share of the images and the shares are
        gathered: eval-mode layers treat every image alone, so this is exact, and the trunk
        (half of a hierarchical split's FLOPs) is no longer computed W times.  In training
        every worker runs the whole batch: BN normalises with the statistics of the batch.
        """
        world, rank = self.worker.world, self.worker.rank
        if self.training or torch.is_grad_enabled() or len(x) < world:
            return self.split.trunk(x)
        sizes = [len(x) // world + (r < len(x) % world) for r in range(world)]
        start = sum(sizes[:rank])
        return _all_gather_cat(
            self.split.trunk(x[start : start + sizes[rank]]), sizes, 0, self.worker, "gathering the trunk's output"
        )

    def branches(self, h: torch.Tensor) -> torch.Tensor:
        """The branch part alone: this worker's branches on the trunk output ``h``, gathered."""
        local = torch.cat([out for root in self.local for out in root(h)], dim=1)
        return class_order(self.split, _GatherColumns.apply(local, self.widths, self.worker.rank, self.worker))

    def check_replicas(self) -> None:
        """Every replicated layer must hold the same weights on all its holders (same source
        file, checkpoints of the same step); called at start and by ``engine.train`` after a resume."""
        for group, params in self._groups:
            flat = torch.cat([p.detach().reshape(-1).double() for p in params])
            sums = torch.stack([flat.sum(), (flat * torch.arange(1, len(flat) + 1, device=flat.device)).sum()])
            sums = sums.to(self.worker.comm_device)
            low, high = -sums, sums.clone()
            with collective(self.worker, "comparing replicated weights"):
                dist.all_reduce(low, op=dist.ReduceOp.MAX, group=group)
                dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
            if not torch.equal(-low, high):
                raise WorkerFailure(
                    f"worker {self.worker.rank}: replicated layers differ between workers: they "
                    "loaded different model files or checkpoints; remove the workers' checkpoints "
                    "and rerun"
                )

    after_load = check_replicas  # engine.train calls model.after_load() once the weights are loaded

    @torch.no_grad()
    def gather_branches(self) -> SplitWideResNet:
        """Copy every branch's weights and BN statistics from its first holder to all workers;
        returns ``split``, now the whole finetuned network on every worker."""
        for node in self.nodes:
            owner = self.placement.holders(node)[0]
            for name, tensor in node.module.state_dict().items():
                if name.startswith("branches."):
                    continue
                buffer = tensor.to(self.worker.comm_device)  # the tensor itself when already there
                with collective(self.worker, f"collecting branch {node.name}"):
                    dist.broadcast(buffer, src=owner, group=self.worker.group)
                if buffer is not tensor:
                    tensor.copy_(buffer)
        return self.split
