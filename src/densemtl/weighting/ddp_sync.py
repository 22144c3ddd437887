"""DDP for param-space gradient steps (``spec/weighting.md`` §1.7 rule 5).

In param space the engine computes the per-task rows itself, averages them over ranks in one collective
and writes the same shared update u on every rank. DDP's reducer must then stay out of the step: it would
average u a second time (a full-model all-reduce for nothing, and not bit-exact for world sizes that are
not powers of two). So, before the forward pass (DDP decides at forward time whether the next backward
synchronises), :meth:`ParamSpaceSync.begin` switches the reducer off; after the backward pass of the last
micro-batch, :meth:`ParamSpaceSync.finish` averages the gradients that are still rank-local (task-specific
parameters, weighting parameters inside the objectives) in flat buckets and switches the reducer back on,
with the buffer broadcast of the next forward pass restored. Rep-space and loss-based steps use DDP's
ordinary synchronised backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from densemtl.weighting.epoch_stats import distributed_world_size

__all__ = ["BUCKET_NUMEL", "ParamSpaceSync", "average_gradients", "check_same_on_all_ranks"]

BUCKET_NUMEL = 1 << 24
"""Elements per all-reduce bucket (64 MiB in fp32)."""


def average_gradients(params: Sequence[Tensor], bucket_numel: int = BUCKET_NUMEL) -> None:
    """Average ``params``' ``.grad`` over the ranks of the default group, in place, in flat fp32 buckets.

    A parameter whose gradient is None on this rank counts as zero; it receives the average if any rank has a
    gradient for it and stays None otherwise (as DDP leaves globally unused parameters). Identity in one process.
    """
    world = distributed_world_size()
    if world == 1 or not params:
        return
    bucket: list[Tensor] = []
    size = 0
    for p in params:
        if bucket and size + p.numel() > bucket_numel:
            _average_bucket(bucket, world)
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    _average_bucket(bucket, world)


def _average_bucket(params: Sequence[Tensor], world: int) -> None:
    device = params[0].device
    parts = [
        p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params
    ]
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([*parts, present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flags = None
    offset = 0
    for i, p in enumerate(params):
        mean = flat[offset : offset + p.numel()].view_as(p) / world
        offset += p.numel()
        if p.grad is not None:
            p.grad.copy_(mean)
            continue
        if flags is None:  # only a rank that lacks some gradient asks the host which ones exist anywhere
            flags = flat[-len(params) :].tolist()
        if flags[i] > 0:
            p.grad = mean.to(p.dtype)


class ParamSpaceSync:
    """Keeps DDP's reducer out of param-space gradient steps and averages the rank-local gradients once."""

    def __init__(self) -> None:
        self._ddp: DistributedDataParallel | None = None
        self._restore = True

    @property
    def active(self) -> bool:
        """Whether the reducer is switched off for the current step."""
        return self._ddp is not None

    def begin(self, strategy: object) -> None:
        """Before the forward pass: switch the reducer off (no effect without a DDP-wrapped model)."""
        ddp = getattr(strategy, "model", None)
        if not isinstance(ddp, DistributedDataParallel):
            return
        if self._ddp is None:
            self._ddp, self._restore = ddp, ddp.require_backward_grad_sync
        ddp.require_backward_grad_sync = False

    def restore(self) -> None:
        """Switch the reducer back on without reducing (a step that ended without a backward pass)."""
        if self._ddp is not None:
            self._ddp.require_backward_grad_sync = self._restore
            self._ddp.require_forward_param_sync = True
            self._ddp = None

    def finish(self, module: nn.Module, shared: Sequence[Tensor]) -> None:
        """After the last backward pass of the step: average every trainable parameter's gradient except the
        ``shared`` ones (u is already identical on all ranks) and DDP's ignored parameters, then restore."""
        if self._ddp is None:
            return
        skip = {id(p) for p in shared}
        ignored = set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
        params = [p for n, p in module.named_parameters() if p.requires_grad and id(p) not in skip and n not in ignored]
        average_gradients(params)
        self.restore()


def check_same_on_all_ranks(value: Tensor, what: str) -> None:
    """Raise ``RuntimeError`` unless ``value`` is bitwise identical on every rank (``spec/weighting.md`` §1.7
    rule 7's debug check; one all-gather and a host comparison, so for debugging only). Identity in one process."""
    world = distributed_world_size()
    if world == 1:
        return
    value = value.detach().reshape(-1)
    gathered = [torch.empty_like(value) for _ in range(world)]
    dist.all_gather(gathered, value.contiguous())
    differing = [r for r, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        shown = "; ".join(f"rank {r}: {gathered[r].tolist()}" for r in (0, *differing))
        raise RuntimeError(f"{what} differ across DDP ranks (they must be bitwise identical): {shown}")
