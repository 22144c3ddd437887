"""Shared pieces of the weighting tests that drive the engine by hand (no Trainer): synthetic batches,
module preparation, and DDP's gradient averaging emulated over gloo ranks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from densemtl.engine import MultiTaskModule
from densemtl.weighting import TrainInfo


def synthetic_sample(i: int, seed: int, h: int = 12, w: int = 12) -> dict:
    """Sample ``i`` of a 3-class semseg / depth / normals set drawn from generator seed ``seed + i``."""
    g = torch.Generator().manual_seed(seed + i)
    return {
        "image": torch.randn(3, h, w, generator=g),
        "semseg": torch.randint(0, 3, (h, w), generator=g),
        "depth": torch.rand(1, h, w, generator=g) * 4 + 0.5,
        "normals": torch.nn.functional.normalize(torch.randn(3, h, w, generator=g), dim=0),
    }


def synthetic_batch(indices: Iterable[int], seed: int) -> dict:
    """The samples ``indices`` of :func:`synthetic_sample`, stacked."""
    samples = [synthetic_sample(i, seed) for i in indices]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def start_training(module: MultiTaskModule, tasks: Sequence[str], world: int, **info) -> None:
    """Logging off, the weighting started, train mode with normalisation layers frozen (eval), so per-rank
    and global batches see the same per-sample computation."""
    module.log = module.log_dict = lambda *a, **k: None
    module.weighting.on_train_start(TrainInfo(tasks=tuple(tasks), world_size=world, seed=3, **info))
    module.train()
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def average_gradients(params: Iterable[torch.Tensor], world: int) -> None:
    """DDP's gradient averaging over the ``world`` gloo ranks (nothing on one process)."""
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world
