"""CAGrad (Liu et al., NeurIPS 2021), ``spec/weighting.md`` §3.2.

g_0 = mean_t g_t with ‖g_0‖ = √(mean(K) + 1e-8); c_abs = c‖g_0‖ + 1e-8;
w* = argmin_{w ∈ Δ_T} wᵀK1/T + c_abs √(wᵀKw + 1e-8); λ = c_abs / (√(w*ᵀKw*) + 1e-8);
u = (g_0 + λ Σ_t w*_t g_t) / ρ with ρ = 1, 1 + c² or 1 + c for ``rescale`` 0, 1 (default), 2.
Native weights w*; effective coefficients (1/T + λ w*_t) / ρ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting
from densemtl.weighting.solvers import cagrad_weights

__all__ = ["CAGrad"]


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """CAGrad.

    Args:
        c: conflict-averse radius (0.4: the official NYUv2 script and the Nash-MTL repository; LibMTL uses 0.5).
        rescale: 0, 1 (default) or 2.
        space: ``param`` (default) or ``rep``.
    """

    spaces = frozenset({"rep", "param"})
    default_space = "param"
    libmtl_name = "CAGrad"
    arg_aliases = {"calpha": "c", "alpha": "c"}

    def __init__(
        self,
        c: float = 0.4,
        rescale: int = 1,
        space: str | None = None,
        rep_reduce: str = "sum_batch",
        accumulation: str = "exact",
    ) -> None:
        super().__init__(space, rep_reduce, accumulation)
        if c < 0:
            raise ValueError(f"CAGrad c must be >= 0, got {c}")
        if rescale not in (0, 1, 2):
            raise ValueError(f"CAGrad rescale must be 0, 1 or 2, got {rescale}")
        self.c = float(c)
        self.rescale = int(rescale)

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        k = gram.double().cpu().numpy()
        t = k.shape[0]
        g0_norm = math.sqrt(max(float(k.mean()), 0.0) + 1e-8)
        c_abs = self.c * g0_norm + 1e-8
        w = cagrad_weights(k, c_abs)
        lam = c_abs / (math.sqrt(max(float(w @ k @ w), 0.0)) + 1e-8)
        rho = (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        coef = (1.0 / t + lam * w) / rho
        w_t = torch.from_numpy(w).to(gram.device, gram.dtype)
        coef_t = torch.from_numpy(coef).to(gram.device, gram.dtype)
        return Aggregation(weights=w_t, coefficients=coef_t, effective=coef_t)
