"""The engine's partial-epoch accumulators of weighting statistics, reduced across DDP ranks.

Sums are kept per statistic as float64 ``(T,)`` tensors on the device, weighted by the local batch
size, so the epoch means are sample-weighted (``spec/weighting.md`` §1.7 rule 1). Nothing syncs with
the host per step. :meth:`EpochAccumulator.reduce` all-reduces sums and counts (SUM) in one collective
and returns the means, identical on every rank. The state round-trips through :meth:`state_dict`
so a mid-epoch checkpoint resumes exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["EpochAccumulator", "distributed_world_size", "reduce_mean"]


def distributed_world_size() -> int:
    """The default process group's size, 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over the ranks of the default process group (identity in one process)."""
    world = distributed_world_size()
    if world == 1:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world


class EpochAccumulator:
    """Sample-weighted running sums of named ``(T,)`` statistics over one epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def update(self, stats: Mapping[str, Tensor], batch_size: int) -> None:
        """Add one step's detached statistics (name -> (T,) tensor), each weighted by ``batch_size``."""
        for name, value in stats.items():
            value = value.detach().to(torch.float64).reshape(-1)
            if name not in self.sums:
                self.sums[name] = torch.zeros_like(value)
                self.counts[name] = torch.zeros((), dtype=torch.float64, device=value.device)
            self.sums[name] += value * batch_size
            self.counts[name] += batch_size

    def reduce(self) -> dict[str, Tensor]:
        """Epoch means over all ranks (one SUM all-reduce of the stacked sums and counts)."""
        names = sorted(self.sums)
        if not names:
            return {}
        flat = torch.cat([torch.cat([self.sums[n], self.counts[n][None]]) for n in names])
        if distributed_world_size() > 1:
            flat = flat.clone()
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        means, offset = {}, 0
        for n in names:
            size = self.sums[n].numel()
            means[n] = flat[offset : offset + size] / flat[offset + size]
            offset += size + 1
        return means

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": {k: v.detach().cpu().clone() for k, v in self.sums.items()},
            "counts": {k: v.detach().cpu().clone() for k, v in self.counts.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str | None = None) -> None:
        self.sums = {k: torch.as_tensor(v).to(device) for k, v in state.get("sums", {}).items()}
        self.counts = {k: torch.as_tensor(v).to(device) for k, v in state.get("counts", {}).items()}
