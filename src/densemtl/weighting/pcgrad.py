"""PCGrad (Yu et al., NeurIPS 2020), ``spec/weighting.md`` §3.2, computed exactly on the Gramian.

For each task i, ĝ_i = g_i is projected, for j over a random permutation of all T tasks (j = i included, as
in LibMTL and the original), onto the normal plane of the *original* g_j whenever ⟨ĝ_i, g_j⟩ < 0; u = Σ_i ĝ_i.
Each ĝ_i is tracked as coefficients over the original rows (ĝ_i = c_iᵀG, ⟨ĝ_i, g_j⟩ = (K c_i)_j), so only K is
needed; the implied weights are w = Σ_i c_i. Permutations come from the method's generator.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = ["PCGrad", "pcgrad_coefficients"]


def pcgrad_coefficients(gram: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """C (T, T) float64 with ĝ_i = Σ_k C[i, k] g_k, for the projection orders ``orders[i]`` of each task."""
    t = gram.shape[0]
    coef = np.eye(t)
    for i in range(t):
        c = coef[i]
        for j in orders[i]:
            dot = c @ gram[:, j]
            if dot < 0 and gram[j, j] > 0:
                c[j] -= dot / gram[j, j]
    return coef


@register_weighting("pcgrad")
class PCGrad(GradientWeighting):
    """PCGrad (param space, as the reference)."""

    spaces = frozenset({"param"})
    default_space = "param"
    libmtl_name = "PCGrad"

    def __init__(self, space: str | None = None, accumulation: str = "exact") -> None:
        super().__init__(space, accumulation=accumulation)

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        t = gram.shape[0]
        orders = [torch.randperm(t, generator=self.generator).tolist() for _ in range(t)]
        coef = pcgrad_coefficients(gram.double().cpu().numpy(), orders)
        w = torch.from_numpy(coef.sum(axis=0)).to(gram.device, gram.dtype)
        return Aggregation(weights=w, coefficients=w, effective=w)
