"""Small exact solvers on the T×T Gramian, in float64 with numpy/SciPy on the host.

Calling them from a training step copies K to the host (T² numbers) and synchronises the device every step
(``spec/weighting.md`` §6 defect #10). They are deterministic given their inputs, so every DDP rank computes
the same weights from the same reduced K.

- :func:`reference_min_norm_simplex`: argmin_{w ∈ Δ_T} wᵀKw (MGDA), exactly, through the classical reduction
  of the min-norm point of a convex hull to non-negative least squares (Lawson–Hanson active set):
  v* = argmin_{v ≥ 0} ‖P v‖² + (1ᵀv − 1)² with PᵀP = K gives w* = v* / 1ᵀv*. MGDA solves this on the device
  (``weighting/simplex_qp.py``); this host version is the tests' reference and MGDA's fallback above 12 tasks.
- :func:`reference_lower_bounded_qp`: argmin_{v ≥ b} vᵀKv (UPGrad), by NNLS on v − b. Likewise the reference
  for UPGrad's on-device solve and its fallback above 12 tasks.
- :func:`nash_bargaining`: α > 0 with α ⊙ Kα = 1 (Nash-MTL), by damped Newton on the strictly convex
  ½αᵀKα − Σ log α, whose stationary point is that system. Nash-MTL's explicitly CPU solver (§1.5).
- :func:`reference_cagrad_weights`: argmin_{w ∈ Δ_T} wᵀb + c √(wᵀKw + ε) (CAGrad), by SLSQP with the exact
  gradient at a tight tolerance. CAGrad solves this exactly on the device (``weighting/cagrad.py``); this host
  version is the tests' reference and CAGrad's fallback above 12 tasks.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, nnls

__all__ = [
    "cagrad_weights",
    "gram_factor",
    "min_norm_simplex",
    "nash_bargaining",
    "reference_cagrad_weights",
    "reference_lower_bounded_qp",
    "reference_min_norm_simplex",
]


def gram_factor(gram: np.ndarray) -> np.ndarray:
    """P (T, T) with PᵀP = K for a symmetric PSD K (negative rounding eigenvalues clipped to 0)."""
    gram = 0.5 * (gram + gram.T)
    lam, vec = np.linalg.eigh(gram)
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T


def reference_min_norm_simplex(gram: np.ndarray) -> np.ndarray:
    """argmin_{w ∈ Δ_T} wᵀKw for a PSD K (T, T) float64 on the host; exact up to float64 rounding."""
    t = gram.shape[0]
    if t == 1:
        return np.ones(1)
    if t == 2:  # closed form on the segment, clipped to [0, 1]
        denom = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
        a = 0.5 if denom <= 0 else float(np.clip((gram[1, 1] - gram[0, 1]) / denom, 0.0, 1.0))
        return np.array([a, 1.0 - a])
    p = gram_factor(gram)
    a = np.vstack([p, np.ones((1, t))])
    b = np.zeros(t + 1)
    b[-1] = 1.0
    v, _ = nnls(a, b, maxiter=50 * t)
    s = v.sum()
    return v / s if s > 0 else np.full(t, 1.0 / t)


def reference_lower_bounded_qp(gram: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """argmin_{v ≥ lower} vᵀKv for a PSD K (T, T) float64 on the host (exact active-set NNLS on z = v − lower ≥ 0)."""
    p = gram_factor(gram)
    z, _ = nnls(p, -p @ lower, maxiter=50 * gram.shape[0])
    return lower + z


min_norm_simplex = reference_min_norm_simplex
"""Former name of :func:`reference_min_norm_simplex` (host), kept for existing callers."""


def nash_bargaining(
    gram: np.ndarray, start: np.ndarray | None = None, tol: float = 1e-6, max_iter: int = 100
) -> tuple[np.ndarray, float, int, bool]:
    """α > 0 solving α_t (Kα)_t = 1 for all t.

    Damped Newton on φ(α) = ½αᵀK̂α − Σ log α_t with K̂ = K / ‖K‖_F (then α = α̂ / √‖K‖_F), warm-started
    from ``start``; steps stay inside α > 0 (fraction to the boundary) and decrease φ (backtracking).

    Returns:
        (α, relative residual ‖Kα − 1/α‖ / ‖1/α‖, iterations, converged). The residual acceptance is ``tol``.
    """
    t = gram.shape[0]
    norm = float(np.linalg.norm(gram))
    if not np.isfinite(norm) or norm <= 0:
        return np.ones(t), float("inf"), 0, False
    k = gram / norm
    alpha = np.ones(t) if start is None else np.asarray(start, dtype=np.float64) * np.sqrt(norm)
    if not np.all(np.isfinite(alpha)) or np.any(alpha <= 0):
        alpha = np.ones(t)

    def phi(a: np.ndarray) -> float:
        return 0.5 * a @ k @ a - np.log(a).sum()

    def residual(a: np.ndarray) -> float:
        return float(np.linalg.norm(k @ a - 1.0 / a) / np.linalg.norm(1.0 / a))

    it = 0
    res = residual(alpha)
    while res > tol and it < max_iter:
        it += 1
        grad = k @ alpha - 1.0 / alpha
        hess = k + np.diag(1.0 / alpha**2)
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        neg = step < 0
        s = min(1.0, 0.99 * float(np.min(-alpha[neg] / step[neg]))) if np.any(neg) else 1.0
        f0, slope = phi(alpha), float(grad @ step)
        while s > 1e-12 and phi(alpha + s * step) > f0 + 1e-4 * s * slope:
            s *= 0.5
        alpha = alpha + s * step
        res = residual(alpha)
    return alpha / np.sqrt(norm), res, it, res <= tol


def reference_cagrad_weights(gram: np.ndarray, c_abs: float, eps: float = 1e-8) -> np.ndarray:
    """w* = argmin_{w ∈ Δ_T} wᵀ(K1/T) + c_abs √(wᵀKw + ε) for K (T, T) float64 on the host, by SLSQP (exact
    gradient, ftol 1e-14) from the uniform point; any T."""
    t = gram.shape[0]
    b = gram.mean(axis=1)

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = np.sqrt(max(w @ gram @ w + eps, eps))
        return float(w @ b + c_abs * q), b + c_abs * (gram @ w) / q

    res = minimize(
        fun,
        np.full(t, 1.0 / t),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * t,
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
        options={"ftol": 1e-14, "maxiter": 200},
    )
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


cagrad_weights = reference_cagrad_weights
"""Former name of :func:`reference_cagrad_weights` (host), kept for existing callers."""
