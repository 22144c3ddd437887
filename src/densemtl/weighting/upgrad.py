"""UPGrad (Quinton and Rey, arXiv 2406.16232; torchjd), ``spec/weighting.md`` §3.2.

K̂ = K / tr(K) (0 when tr(K) < ``norm_eps``) plus ``reg_eps``·I; for each i, v^{(i)} = argmin_v vᵀK̂v subject to
v ≥ e_i / T (uniform preference); w = Σ_i v^{(i)}; u = Σ_t w_t g_t. Then w_t ≥ 1/T and ⟨u, g_t⟩ = (Kw)_t ≥ 0.
Each box-constrained QP is solved exactly by NNLS in float64 (``weighting/solvers.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting
from densemtl.weighting.solvers import lower_bounded_qp

__all__ = ["UPGrad", "upgrad_weights"]


def upgrad_weights(gram: np.ndarray, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> np.ndarray:
    """w (T,) float64 from K (T, T) float64."""
    t = gram.shape[0]
    trace = float(np.trace(gram))
    k = gram / trace if trace >= norm_eps else np.zeros_like(gram)
    k = k + reg_eps * np.eye(t)
    return sum(lower_bounded_qp(k, np.eye(t)[i] / t) for i in range(t))


@register_weighting("upgrad")
class UPGrad(GradientWeighting):
    """UPGrad.

    Args:
        norm_eps: trace below which K̂ = 0 (1e-4, torchjd).
        reg_eps: ridge added to K̂ (1e-4, torchjd).
        space: ``param`` (default) or ``rep``.
    """

    spaces = frozenset({"rep", "param"})
    default_space = "param"
    libmtl_name = "UPGrad"

    def __init__(
        self,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        space: str | None = None,
        rep_reduce: str = "sum_batch",
        accumulation: str = "exact",
    ) -> None:
        super().__init__(space, rep_reduce, accumulation)
        if norm_eps < 0 or reg_eps < 0:
            raise ValueError(f"UPGrad norm_eps and reg_eps must be >= 0, got {norm_eps}, {reg_eps}")
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)

    def weights(self, gram: Tensor, losses: Mapping[str, Tensor], ctx: StepContext) -> Aggregation:
        w = upgrad_weights(gram.double().cpu().numpy(), self.norm_eps, self.reg_eps)
        w_t = torch.from_numpy(w).to(gram.device, gram.dtype)
        return Aggregation(weights=w_t, coefficients=w_t, effective=w_t)
