"""Geometric loss strategy (GLS; Chennupati et al., CVPRW 2019), ``spec/weighting.md`` §3.2.

Objective (Π_t L_t)^{1/T} = exp(mean_t log L_t) in at least fp32. Its gradient equals that of
Σ_t w_t L_t with the implied weights w_t = L_GLS / (T·L_t), which are the logged weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import Kind, StepContext, Weighting, at_least_fp32, register_weighting

__all__ = ["GeometricLossStrategy"]


@register_weighting("gls")
class GeometricLossStrategy(Weighting):
    """GLS (no arguments)."""

    kind = Kind.LOSSES
    libmtl_name = "GLS"

    def combine(self, losses: Mapping[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        values = [at_least_fp32(losses[t]) for t in self.tasks]
        objective = torch.exp(sum(torch.log(v) for v in values) / len(values))
        implied = {t: (objective / (len(values) * v)).detach() for t, v in zip(self.tasks, values)}
        return objective, implied
