"""Random loss weighting (RLW; Lin et al., TMLR 2022), ``spec/weighting.md`` §3.2.

Every step z ~ N(0, I_T) from the method's own generator (seeded from the run seed, identical on
all ranks, never the global RNGs) and w = softmax(z) (Σw = 1), or T·softmax(z) for ``scale="sum_T"``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import Kind, StepContext, Weighting, at_least_fp32, register_weighting

__all__ = ["RandomLossWeighting"]

SCALES = ("sum_1", "sum_T")


@register_weighting("rlw")
class RandomLossWeighting(Weighting):
    """RLW. Args: ``scale``: ``sum_1`` (paper, LibMTL) or ``sum_T``."""

    kind = Kind.LOSSES
    libmtl_name = "RLW"

    def __init__(self, scale: str = "sum_1") -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"RLW scale must be one of {list(SCALES)}, got {scale!r}")
        self.scale = scale

    def draw(self) -> Tensor:
        """One weight vector (T,) on the CPU, from the method's generator."""
        z = torch.randn(self.num_tasks, generator=self.generator, dtype=torch.float64)
        w = torch.softmax(z, dim=0)
        return w * self.num_tasks if self.scale == "sum_T" else w

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        first = losses[self.tasks[0]]
        w = self.draw().to(first.device)
        total = None
        for i, t in enumerate(self.tasks):
            term = w[i].to(losses[t].dtype) * at_least_fp32(losses[t])
            total = term if total is None else total + term
        return total, {t: w[i] for i, t in enumerate(self.tasks)}
