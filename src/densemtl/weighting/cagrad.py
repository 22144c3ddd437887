"""CAGrad (Liu et al., NeurIPS 2021), ``spec/weighting.md`` §3.2.

g_0 = mean_t g_t with ‖g_0‖ = √(mean(K) + 1e-8); c_abs = c‖g_0‖ + 1e-8;
w* = argmin_{w ∈ Δ_T} wᵀK1/T + c_abs √(wᵀKw + 1e-8); λ = c_abs / (√(w*ᵀKw*) + 1e-8);
u = (g_0 + λ Σ_t w*_t g_t) / ρ with ρ = 1, 1 + c² or 1 + c for ``rescale`` 0, 1 (default), 2.
Native weights w*; effective coefficients (1/T + λ w*_t) / ρ.

The dual w* is solved exactly in float64 on K's device, with no host synchronisation (§1.5, §1.8 rule 4,
§6 defect #10), by :func:`cagrad_weights`; every quantity above stays a device tensor. Above
``MAX_ENUMERATION_TASKS`` (12) tasks it falls back to the host SLSQP solver (``weighting/solvers.py``), which
copies K to the host every step.

How the on-device solve works. F(w) = wᵀb + c√(wᵀKw + ε), b = K1/T, c = c_abs > 0, is convex and smooth on
the simplex (the square root stays ≥ √ε). On a support S (w_S > 0, w = 0 off S) its KKT conditions read
b_S + t K_SS w_S = μ1, 1ᵀw_S = 1 with t = c / √(wᵀKw + ε) > 0. With the bordered matrix M_S = [[K_SS, 1],
[1ᵀ, 0]] (shared with MGDA, ``simplex_qp.simplex_kkt_matrices``) and two solves per support,

    M_S [p; −ν] = [0; 1]  (p: the min-norm point of S's affine hull, ν = pᵀKp),
    M_S [q; −μ'] = [−b_S; 0]  (1ᵀq = 0, Kq = μ'1 − b, β = qᵀKq),

the solution is w_S = p + q / t, for which wᵀKw = ν + β/t² (pᵀKq = ν1ᵀq = 0), so t = c/√(wᵀKw + ε) is the
closed form t² = (c² − β)/(ν + ε). If c² ≤ β the support has no stationary point; its candidate is then p.

Why this is exact: if M_S is singular for the optimal support, there is x ≠ 0 with 1ᵀx = 0 and Kx = 0, along
which neither wᵀb = wᵀK1/T nor wᵀKw changes; moving the optimum along x until an entry reaches 0 gives an
optimum with a smaller support, and repeating ends at a support with a non-singular M_S (|S| = 1 always is),
whose candidate is that optimum. All 2^T − 1 supports are solved in one batched LU (``torch.linalg.solve_ex``:
singular systems give non-finite or harmless candidates, nothing is read back). Every candidate is made
feasible (negative entries clipped, renormalised) and scored with the true F. The answer is, among the
candidates whose F is within rounding (8·T·ε_mach·|F|-scale) of the least, the first in support order (largest
first, then bit pattern) that is a KKT point to rounding (clipping plus relative Frank–Wolfe gap ≤ 64·T·ε_mach),
else the one of least violation. So F(answer) ≤ F(best candidate) + rounding, the result is a pure function of
K's bits, and for c_abs = 0 it is a minimiser of wᵀb.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from densemtl.weighting.base import StepContext, register_weighting
from densemtl.weighting.gradient_method import Aggregation, GradientWeighting
from densemtl.weighting.simplex_qp import MAX_ENUMERATION_TASKS, simplex_kkt_matrices
from densemtl.weighting.solvers import reference_cagrad_weights

__all__ = ["CAGrad", "cagrad_objective", "cagrad_weights"]

F64 = torch.float64
SQRT_EPS = 1e-8
"""The ε inside CAGrad's square roots (spec §3.2): ‖g_0‖, the dual objective, and λ's denominator."""


def cagrad_objective(gram: Tensor, weights: Tensor, c_abs: Tensor | float, eps: float = SQRT_EPS) -> Tensor:
    """F(w) = wᵀK1/T + c_abs √(wᵀKw + ε) for weights (..., T) and K (T, T), float64 on K's device → (...)."""
    k = gram.to(F64)
    w = weights.to(F64)
    quad = ((w @ k) * w).sum(dim=-1).clamp_min(0.0)
    return w @ k.mean(dim=1) + c_abs * torch.sqrt(quad + eps)


def cagrad_weights(gram: Tensor, c_abs: Tensor | float, eps: float = SQRT_EPS) -> Tensor:
    """w* = argmin_{w ∈ Δ_T} wᵀK1/T + c_abs √(wᵀKw + ε), exactly, on K's device without host synchronisation.

    Args:
        gram: (T, T) symmetric PSD Gramian K, any float dtype and device, T ≤ ``MAX_ENUMERATION_TASKS``.
        c_abs: the absolute radius c_abs ≥ 0, a Python float or a 0-d tensor on K's device.
        eps: ε inside the square root (1e-8, spec §3.2).

    Returns:
        w* (T,) float64 on K's device: w ≥ 0, Σw = 1. Non-finite K gives non-finite w.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"expected a square (T, T) Gramian, got shape {tuple(gram.shape)}")
    t = gram.shape[0]
    if t > MAX_ENUMERATION_TASKS:
        raise ValueError(f"cagrad_weights enumerates supports for T <= {MAX_ENUMERATION_TASKS}, got T = {t}")
    k = gram.to(F64)
    k = 0.5 * (k + k.T)
    c = c_abs.to(device=k.device, dtype=F64) if isinstance(c_abs, Tensor) else float(c_abs)  # no host→device copy
    # K = s·K̂ with s = max_t K_tt, so the LU sees entries ≤ 1; F is evaluated in K's own units (ε is absolute)
    diag_max = k.diagonal().max()
    s = torch.where(diag_max > 0, diag_max, torch.ones_like(diag_max))
    k_hat = k / s
    b_hat = k_hat.mean(dim=1)
    masks, bordered = simplex_kkt_matrices(k_hat)
    rhs = torch.zeros(masks.shape[0], t + 1, 2, dtype=F64, device=k.device)
    rhs[:, t, 0] = 1.0
    rhs[:, :t, 1] = -masks * b_hat
    solution, _ = torch.linalg.solve_ex(bordered, rhs)  # singular supports: see the module docstring
    p = solution[:, :t, 0] * masks
    q = solution[:, :t, 1] * masks
    nu = s * ((p @ k_hat) * p).sum(dim=1)  # pᵀKp
    beta = s * ((q @ k_hat) * q).sum(dim=1)  # qᵀKq
    slack = c * c - beta
    tiny = torch.finfo(F64).tiny
    inv_t = torch.where(slack > 0, torch.sqrt(nu.clamp_min(0.0) + eps) / torch.sqrt(slack.clamp_min(tiny)), 0.0)
    raw = p + q * inv_t[:, None]
    w = raw.clamp_min(0.0)
    w = w / w.sum(dim=1, keepdim=True)  # feasible; all-clipped or non-finite candidates become NaN (never win)

    # objective in K's units, and the KKT violation (clipping + Frank–Wolfe gap relative to the gradient's scale)
    kw_hat = w @ k_hat
    r = torch.sqrt(s * (kw_hat * w).sum(dim=1).clamp_min(0.0) + eps)
    obj = s * (w @ b_hat) + c * r
    abs_kw_hat = w @ k_hat.abs()  # |K̂|w (w ≥ 0): the rounding scale of K̂w and wᵀK̂w
    f_scale = s * (w @ b_hat.abs()) + c * r + c * s * (abs_kw_hat * w).sum(dim=1) / (2 * r)  # rounding scale of F
    grad_hat = b_hat + (c / r)[:, None] * kw_hat  # ∇F / s
    g_scale = b_hat.abs().amax() + (c / r) * abs_kw_hat.amax(dim=1)
    gap = (w * grad_hat).sum(dim=1) - grad_hat.amin(dim=1)
    violation = raw.amin(dim=1).neg().clamp_min(0.0) + gap.clamp_min(0.0) / g_scale.clamp_min(tiny)

    eps_mach = torch.finfo(F64).eps
    inf = torch.full_like(obj, float("inf"))
    obj = torch.where(torch.isfinite(obj), obj, inf)
    best = obj.argmin(dim=0, keepdim=True)  # (1,): gather, not indexing with a 0-d tensor (that reads it back)
    tol = torch.nan_to_num(8 * t * eps_mach * f_scale.gather(0, best), nan=0.0, posinf=0.0)
    within = obj <= obj.gather(0, best) + tol
    violation = torch.nan_to_num(violation, nan=float("inf"))
    exact = violation <= 64 * t * eps_mach
    score = torch.where(within, torch.where(exact, torch.zeros_like(violation), violation), inf)
    return w.index_select(0, score.argmin(dim=0, keepdim=True))[0]  # first minimal


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
        k = gram.to(F64)
        t = k.shape[0]
        g0_norm = torch.sqrt(k.mean().clamp_min(0.0) + SQRT_EPS)
        c_abs = self.c * g0_norm + SQRT_EPS
        if t <= MAX_ENUMERATION_TASKS:
            w = cagrad_weights(k, c_abs)  # on the device, no host sync
        else:  # host fallback for many tasks: one device-to-host copy of K per step
            w = torch.from_numpy(reference_cagrad_weights(k.cpu().numpy(), float(c_abs))).to(k.device)
        lam = c_abs / (torch.sqrt(((w @ k) * w).sum().clamp_min(0.0)) + SQRT_EPS)
        rho = (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        coef = ((1.0 / t + lam * w) / rho).to(gram.dtype)
        return Aggregation(weights=w.to(gram.dtype), coefficients=coef, effective=coef)
