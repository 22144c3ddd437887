"""Exact T×T quadratic programs in float64 on the Gramian's device, without host synchronisation (T ≤ 12).

``spec/weighting.md`` §1.5 and §1.8 rule 4 ask for T×T solves in fp64 on the device; §6 defect #10 is
LibMTL's per-step host round trip. Both problems here are convex QPs in T ≤ 12 variables, small enough to
enumerate every active set at once:

- :func:`simplex_min_norm`: argmin_{α ∈ Δ_T} αᵀKα (MGDA). For each non-empty support S, the KKT system of
  the problem restricted to S with Σα = 1 is the bordered system [[K_SS, 1], [1ᵀ, 0]] [α_S; ν] = [0; 1].
- :func:`lower_bounded_min_norm`: argmin_{v ≥ b} vᵀKv for a batch of lower bounds b (UPGrad's per-row
  projections). For each free set F (possibly empty), v_A = b_A off F and K_FF z_F = −(Kb)_F with v = b + z.

All 2^T systems are solved in one batched LU (``torch.linalg.solve_ex``, which reports singular systems in
``info`` instead of raising, so nothing is read back). Each candidate is then projected onto the feasible
set (α: negative entries clipped, renormalised to Σα = 1; v: v ← max(v, b)), so every candidate is feasible
and its objective is evaluated with the true K. The answer is the candidate of least objective.

Why this is exact: a PSD QP always has an optimum whose support (free set) makes the restricted KKT matrix
non-singular: if it were singular, a null vector x of K_SS (with 1ᵀx = 0 for the simplex) has Kx = 0, and
moving the optimum along x changes neither the objective nor Kα until one more entry reaches its bound.
That candidate is in the batch, solved to backward-stable accuracy, and the minimum over feasible candidates
can be no worse. Singular systems (duplicated rows, rank(K) < T, zero rows) yield non-finite candidates,
which are discarded, or finite feasible points, which are harmless. Primal feasibility holds by
construction, and the least-objective feasible point satisfies the KKT inequalities (dual feasibility) to
rounding; the tests check both, and the objective against SciPy's active-set NNLS (``weighting/solvers.py``,
the host reference).

Determinism: candidates are ordered by support size (largest first), then by bit pattern; among candidates
whose objectives agree with the least one to within its rounding bound (8·T·ε·|x|ᵀ|K||x|), the first in
that order is taken (``argmin``/``argmax`` return the first index). The result is a pure function of K's
bits on a given device, so DDP ranks, which share the all-reduced K, agree. Only tensor operations are used
(no ``.item()``, ``.cpu()``, ``.tolist()``, numpy or Python branching on values), so nothing waits for the
device.

Cost: 2^T small LU factorisations per call. On one CPU core, T = 10 takes about 1.2 ms (MGDA) and 3.4 ms
(UPGrad), against 0.07 and 0.4 ms for the host SciPy solvers (``benchmarks/bench_solvers.py``): the point is
the absent synchronisation on accelerators. Callers fall back to the host solvers above
:data:`MAX_ENUMERATION_TASKS`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = [
    "MAX_ENUMERATION_TASKS",
    "lower_bounded_min_norm",
    "simplex_kkt_matrices",
    "simplex_min_norm",
    "subset_masks",
]

MAX_ENUMERATION_TASKS = 12
"""Largest T solved by enumeration (4,096 active sets); the methods use the host solvers above it."""

F64 = torch.float64


@functools.lru_cache(maxsize=64)
def subset_masks(t: int, device: torch.device, include_empty: bool = False) -> Tensor:
    """(B, T) bool masks of the subsets of {0, …, T−1}, largest first, then by bit pattern (B = 2^T or 2^T − 1).

    Built with tensor operations on ``device`` and cached per (T, device).
    """
    codes = torch.arange(0 if include_empty else 1, 2**t, device=device)
    bits = (codes[:, None] >> torch.arange(t, device=device)) & 1
    key = (t - bits.sum(dim=1)) * 2**t + codes  # unique: size descending, then the code
    return bits[torch.argsort(key)].bool()


@functools.lru_cache(maxsize=64)
def _kkt_templates(t: int, device: torch.device, bordered: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Cached per (T, device): (masks (B, T) f64, K-block mask (B, n, n), constant part (B, n), n = T (+ 1)).

    The KKT matrix of subset S is ``constant + kblock * K`` (K zero-padded to n × n): K_SS in the block, the
    identity off S, and for the simplex (``bordered``) the border [1_S; 0] in the last row and column.
    """
    masks = subset_masks(t, device, include_empty=not bordered).to(F64)
    n = t + 1 if bordered else t
    kblock = torch.zeros(masks.shape[0], n, n, dtype=F64, device=device)
    kblock[:, :t, :t] = masks[:, :, None] * masks[:, None, :]
    constant = torch.zeros_like(kblock)
    constant[:, :t, :t] = torch.diag_embed(1.0 - masks)
    if bordered:
        constant[:, :t, t] = masks
        constant[:, t, :t] = masks
    return masks, kblock, constant


def simplex_kkt_matrices(k: Tensor) -> tuple[Tensor, Tensor]:
    """The bordered KKT matrices of every non-empty support S of the simplex, for a symmetric K (T, T) float64.

    Returns:
        (masks (B, T) float64, matrices (B, T + 1, T + 1)), B = 2^T − 1 in :func:`subset_masks` order. Matrix
        S is [[K_SS, 1_S], [1_Sᵀ, 0]], with the identity on the rows and columns of the tasks off S (so a
        solve returns 0 there for a right-hand side that is 0 there). Used by CAGrad's on-device solve.
    """
    t = k.shape[0]
    masks, kblock, constant = _kkt_templates(t, k.device, True)
    return masks, torch.addcmul(constant, kblock, torch.nn.functional.pad(k, (0, 1, 0, 1)))


def _symmetric_f64(gram: Tensor) -> Tensor:
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"expected a square (T, T) Gramian, got shape {tuple(gram.shape)}")
    k = gram.to(F64)
    return 0.5 * (k + k.T)


def _normalised(k: Tensor) -> Tensor:
    """K / max_t K_tt (unchanged when that is ≤ 0): the minimisers are scale-free; entries become ≤ 1."""
    scale = k.diagonal().max()
    return k / torch.where(scale > 0, scale, torch.ones_like(scale))


def _select(candidates: Tensor, obj: Tensor, violation: Tensor, k: Tensor) -> Tensor:
    """The answer among feasible ``candidates`` (B, N, T) with objectives ``obj`` (B, N) → (N, T).

    Candidates whose objective is within rounding of the least one (8·T·ε·|x|ᵀ|K||x| of the least) form the
    window. Among them the first (in subset order) whose KKT ``violation`` is at rounding level (64·T·ε) wins,
    else the one of least violation. So the answer is optimal to rounding, and an exact KKT point of the QP
    whenever one is in the window (a clipped candidate can tie on the objective while its entries differ by
    ~√ε). Non-finite candidates never win unless all are (then non-finite K in, non-finite answer out).
    """
    t = k.shape[0]
    eps = torch.finfo(F64).eps
    inf = torch.full_like(obj, float("inf"))
    obj = torch.where(torch.isfinite(obj), obj, inf)
    best = obj.argmin(dim=0, keepdim=True)  # (1, N)
    x = candidates.gather(0, best[:, :, None].expand(1, candidates.shape[1], t))[0].abs()
    bound = ((x @ k.abs()) * x).sum(dim=-1)  # rounding scale of the least objective, (N,)
    tol = torch.nan_to_num(8 * t * eps * bound, nan=0.0, posinf=0.0)
    within = obj <= obj.gather(0, best) + tol
    violation = torch.nan_to_num(violation, nan=float("inf"))
    exact = violation <= 64 * t * eps
    score = torch.where(within, torch.where(exact, torch.zeros_like(violation), violation), inf)
    pick = score.argmin(dim=0)  # first minimal, (N,)
    return candidates.gather(0, pick[None, :, None].expand(1, candidates.shape[1], t))[0]


def simplex_min_norm(gram: Tensor) -> Tensor:
    """argmin_{α ∈ Δ_T} αᵀKα for a symmetric PSD Gramian K (T, T), T ≤ :data:`MAX_ENUMERATION_TASKS`.

    Args:
        gram: (T, T) Gramian, any float dtype, on any device.

    Returns:
        α (T,) float64 on ``gram``'s device: α ≥ 0, Σα = 1. Non-finite K gives non-finite α.
    """
    t = gram.shape[0]
    if t > MAX_ENUMERATION_TASKS:
        raise ValueError(f"simplex_min_norm enumerates active sets for T <= {MAX_ENUMERATION_TASKS}, got T = {t}")
    k = _normalised(_symmetric_f64(gram))
    m, kblock, constant = _kkt_templates(t, k.device, True)
    bordered = torch.addcmul(constant, kblock, torch.nn.functional.pad(k, (0, 1, 0, 1)))
    rhs = torch.zeros(t + 1, 1, dtype=F64, device=k.device)
    rhs[t] = 1.0
    solution, _ = torch.linalg.solve_ex(bordered, rhs.expand(m.shape[0], t + 1, 1))  # singular: see above
    raw = solution[:, :t, 0] * m
    alpha = raw.clamp_min(0.0)
    alpha = alpha / alpha.sum(dim=1, keepdim=True)  # feasible; all-clipped candidates become NaN (discarded)
    k_alpha = alpha @ k
    obj = (k_alpha * alpha).sum(dim=1)
    # KKT violation: clipped entries (primal) and λ − min_j (Kα)_j with λ = αᵀKα (dual); |K| ≤ 1 here
    violation = raw.amin(dim=1).neg().clamp_min(0.0) + (obj - k_alpha.amin(dim=1)).clamp_min(0.0)
    return _select(alpha[:, None, :], obj[:, None], violation[:, None], k)[0]


def lower_bounded_min_norm(gram: Tensor, lower: Tensor) -> Tensor:
    """v_n = argmin_{v ≥ b_n} vᵀKv for each lower bound b_n, K symmetric PSD (T, T), T ≤ :data:`MAX_ENUMERATION_TASKS`.

    Args:
        gram: (T, T) Gramian, any float dtype, on any device.
        lower: (N, T) lower bounds b_n, on the same device.

    Returns:
        (N, T) float64 on ``gram``'s device, v_n ≥ b_n. The minimiser is unique when K is positive definite.
    """
    t = gram.shape[0]
    if t > MAX_ENUMERATION_TASKS:
        raise ValueError(f"lower_bounded_min_norm enumerates active sets for T <= {MAX_ENUMERATION_TASKS}, got T = {t}")
    if lower.dim() != 2 or lower.shape[1] != t:
        raise ValueError(f"lower must be (N, T) with T = {t}, got shape {tuple(lower.shape)}")
    k = _normalised(_symmetric_f64(gram))
    lower = lower.to(F64)
    m, kblock, constant = _kkt_templates(t, k.device, False)  # subsets = free sets F, the empty one included
    rhs = m[:, :, None] * (k @ lower.T).neg()  # (B, T, N): −(K b_n)_F, 0 off F
    z, _ = torch.linalg.solve_ex(torch.addcmul(constant, kblock, k), rhs)  # z = 0 off F (identity rows)
    z = z.transpose(1, 2)  # (B, N, T)
    v = lower[None] + z.clamp_min(0.0)  # feasible
    k_v = v @ k
    obj = (k_v * v).sum(dim=-1)
    # KKT violation, relative to max|v| (|K| ≤ 1 here): clipped entries (primal), negative μ = Kv (dual)
    v_scale = torch.maximum(v.amax(dim=-1), v.amin(dim=-1).neg()).clamp_min(torch.finfo(F64).tiny)
    violation = (z.amin(dim=-1).neg().clamp_min(0.0) + k_v.amin(dim=-1).neg().clamp_min(0.0)) / v_scale
    return _select(v, obj, violation, k)
