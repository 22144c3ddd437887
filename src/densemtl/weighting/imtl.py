"""IMTL (Liu et al., ICLR 2021), ``spec/weighting.md`` §3.2.

``variant="hybrid"`` (default, the paper's full IMTL and LibMTL's): IMTL-L task objectives f_t = e^{s_t} L_t − s_t
with learnable s (init 0), then IMTL-G on the rows ∇f_t. ``"G"``: f_t = L_t. ``"L"``: IMTL-L objectives summed.

IMTL-G from K alone, with n_t = √K_tt and unit vectors q_t = g_t / n_t: α_{2..T} = (g_1Qᵀ)(DQᵀ)^{-1} with
D = [g_1 − g_t]_{t≥2}, Q = [q_1 − q_t]_{t≥2}, α_1 = 1 − Σ_{t≥2} α_t; every entry is an expression in K, e.g.
(g_1Qᵀ)_j = K_11/n_1 − K_1j/n_j. The update u = Σ α_t g_t has equal projections on every q_t; Σα = 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from densemtl.weighting.base import StepContext, at_least_fp32, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting

__all__ = ["IMTL", "imtl_g_weights"]

VARIANTS = ("hybrid", "G", "L")


def imtl_g_weights(gram: Tensor) -> Tensor:
    """IMTL-G's α (T,) from K (T, T), solved in float64 (T = 1 gives α = 1)."""
    k = gram.double()
    t = k.shape[0]
    if t == 1:
        return torch.ones(1, dtype=torch.float64, device=k.device)
    n = torch.sqrt(torch.diagonal(k).clamp_min(1e-300))
    # (g_1 Qᵀ)_j = K_11/n_1 − K_1j/n_j ;  (D Qᵀ)_ij = K_11/n_1 − K_1j/n_j − K_i1/n_1 + K_ij/n_j  (i, j ≥ 2)
    b = k[0, 0] / n[0] - k[0, 1:] / n[1:]
    m = b[None, :] - k[1:, :1] / n[0] + k[1:, 1:] / n[None, 1:]
    rest = torch.linalg.solve(m.T, b)
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


@register_weighting("imtl")
class IMTL(GradientWeighting):
    """IMTL.

    Args:
        variant: ``hybrid`` (default), ``G`` or ``L``.
        space: ``rep`` (default: the LibMTL reference run) or ``param``.
        rep_reduce: rep rows ``sum_batch`` or ``flatten``.
    """

    spaces = frozenset({"rep", "param"})
    default_space = "rep"
    libmtl_name = "IMTL"

    def __init__(
        self,
        variant: str = "hybrid",
        space: str | None = None,
        rep_reduce: str = "sum_batch",
        accumulation: str = "exact",
    ) -> None:
        super().__init__(space, rep_reduce, accumulation)
        if variant not in VARIANTS:
            raise ValueError(f"IMTL variant must be one of {list(VARIANTS)}, got {variant!r}")
        self.variant = variant

    def reset_state(self) -> None:
        if self.variant != "G":
            self.log_scales = nn.Parameter(torch.zeros(self.num_tasks))

    def task_objectives(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.variant == "G":
            return dict(losses)
        s = self.log_scales
        return {t: torch.exp(s[i]) * at_least_fp32(losses[t]) - s[i] for i, t in enumerate(self.tasks)}

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        if self.variant == "L":
            alpha = torch.ones(gram.shape[0], dtype=torch.float64, device=gram.device)
        else:
            alpha = imtl_g_weights(gram)
        alpha = alpha.to(gram.dtype)
        effective = alpha if self.variant == "G" else alpha * torch.exp(self.log_scales.detach()).to(alpha)
        return Aggregation(weights=alpha, coefficients=alpha, effective=effective)
