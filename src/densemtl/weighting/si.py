"""Scale-invariant loss (SI; the Nash-MTL repository's ``scaleinvls``), ``spec/weighting.md`` §3.2.

Objective Σ_t log(L_t + ε), ε = 1e-8: invariant to rescaling any L_t; implied weights 1/(L_t + ε).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import Kind, StepContext, Weighting, at_least_fp32, register_weighting

__all__ = ["ScaleInvariant"]


@register_weighting("si")
class ScaleInvariant(Weighting):
    """SI. Args: ``eps`` ε (1e-8)."""

    kind = Kind.LOSSES

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"SI eps must be >= 0, got {eps}")
        self.eps = float(eps)

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        values = [at_least_fp32(losses[t]) + self.eps for t in self.tasks]
        objective = sum(torch.log(v) for v in values)
        return objective, {t: (1.0 / v).detach() for t, v in zip(self.tasks, values)}
