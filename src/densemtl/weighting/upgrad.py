"""UPGrad (Quinton and Rey, arXiv 2406.16232; torchjd), ``spec/weighting.md`` §3.2.

K̂ = K / tr(K) (0 when tr(K) < ``norm_eps``) plus ``reg_eps``·I; for each i, v^{(i)} = argmin_v vᵀK̂v subject to
v ≥ e_i / T (uniform preference); w = Σ_i v^{(i)}; u = Σ_t w_t g_t. Then w_t ≥ 1/T and ⟨u, g_t⟩ = (Kw)_t ≥ 0.
The T box-constrained QPs are solved exactly in float64 on K's device, with no host synchronisation, by one
batched active-set enumeration (``weighting/simplex_qp.py``). Above ``MAX_ENUMERATION_TASKS`` (12) tasks they
fall back to the host NNLS solver (``weighting/solvers.py``), which copies K to the host every step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting
from densemtl.weighting.simplex_qp import MAX_ENUMERATION_TASKS, lower_bounded_min_norm
from densemtl.weighting.solvers import reference_lower_bounded_qp

__all__ = ["UPGrad", "reference_upgrad_weights", "upgrad_weights"]


def upgrad_weights(gram: Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> Tensor:
    """w (T,) float64 on K's device from K (T, T), T ≤ 12; no host synchronisation."""
    t = gram.shape[0]
    k = gram.to(torch.float64)
    trace = torch.trace(k)
    k_hat = torch.where(trace >= norm_eps, k / trace, torch.zeros_like(k))
    k_hat = k_hat + reg_eps * torch.eye(t, dtype=k.dtype, device=k.device)
    lower = torch.eye(t, dtype=k.dtype, device=k.device) / t  # row i: the bound e_i / T of v^{(i)}
    return lower_bounded_min_norm(k_hat, lower).sum(dim=0)


def reference_upgrad_weights(gram: np.ndarray, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> np.ndarray:
    """w (T,) float64 from K (T, T) float64 on the host (SciPy NNLS per row); any T."""
    t = gram.shape[0]
    trace = float(np.trace(gram))
    k = gram / trace if trace >= norm_eps else np.zeros_like(gram)
    k = k + reg_eps * np.eye(t)
    return sum(reference_lower_bounded_qp(k, np.eye(t)[i] / t) for i in range(t))


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
        if gram.shape[0] <= MAX_ENUMERATION_TASKS:
            w_t = upgrad_weights(gram, self.norm_eps, self.reg_eps).to(gram.dtype)  # on the device, no host sync
        else:  # host fallback for many tasks: one device-to-host copy of K per step
            w = reference_upgrad_weights(gram.double().cpu().numpy(), self.norm_eps, self.reg_eps)
            w_t = torch.from_numpy(w).to(gram.device, gram.dtype)
        return Aggregation(weights=w_t, coefficients=w_t, effective=w_t)
