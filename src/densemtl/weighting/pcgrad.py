"""PCGrad (Yu et al., NeurIPS 2020), ``spec/weighting.md`` §3.2, computed exactly on the Gramian.

For each task i, ĝ_i = g_i is projected, for j over a random permutation of all T tasks (j = i included, as
in LibMTL and the original), onto the normal plane of the *original* g_j whenever ⟨ĝ_i, g_j⟩ < 0; u = Σ_i ĝ_i.
Each ĝ_i is tracked as coefficients over the original rows (ĝ_i = c_iᵀG, ⟨ĝ_i, g_j⟩ = (K c_i)_j), so only K is
needed; the implied weights are w = Σ_i c_i, computed in fp64 on K's device. Permutations come from the
method's generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = ["PCGrad", "pcgrad_coefficients"]


def pcgrad_coefficients(gram: Tensor, orders: Tensor | Sequence[Sequence[int]]) -> Tensor:
    """C (T, T) with ĝ_i = Σ_k C[i, k] g_k, for the projection orders ``orders[i]`` of each task.

    Args:
        gram: K (T, T), in the dtype and on the device the coefficients are wanted.
        orders: (T, m) task indices (m = T for PCGrad; any m, the same for every task).

    All T tasks advance together, one order position at a time (each task's projections only read K and its
    own coefficients), with ``torch.where`` for the conflict test: no host synchronisation.
    """
    t = gram.shape[0]
    order = torch.as_tensor(orders, dtype=torch.long).to(gram.device)
    coef = torch.eye(t, dtype=gram.dtype, device=gram.device)
    tasks = torch.arange(t, device=gram.device)
    diag = torch.diagonal(gram)
    for position in range(order.shape[1]):
        j = order[:, position]
        dot = (coef @ gram)[tasks, j]  # ⟨ĝ_i, g_j⟩ = (C K)[i, j]
        norm2 = diag[j]
        conflict = (dot < 0) & (norm2 > 0)
        step = torch.where(conflict, dot / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)), 0.0)
        coef = coef.index_put((tasks, j), -step, accumulate=True)
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
        orders = torch.stack([torch.randperm(t, generator=self.generator) for _ in range(t)])
        w = pcgrad_coefficients(gram.double(), orders).sum(dim=0).to(gram.dtype)
        return Aggregation(weights=w, coefficients=w, effective=w)
