"""CAGrad's on-device dual solve (``weighting/cagrad.py``: :func:`cagrad_weights`) and CAGrad without host sync.

The dual is w* = argmin_{w ∈ Δ_T} F(w), F(w) = wᵀK1/T + c_abs √(wᵀKw + 1e-8) (``spec/weighting.md`` §3.2).
Checked against independent computations: SciPy SLSQP at ftol 1e-14 (the host reference in
``weighting/solvers.py``, plus starts from vertices), a numpy Frank–Wolfe gap where the device answer is the
better one, a bounded scalar minimisation for T = 2, the limits c_abs = 0 (min wᵀb) and c_abs → ∞ (MGDA's
min-norm point). Also: feasibility, bitwise determinism, the host fallback above 12 tasks, and that no host
synchronisation (``.item()``, ``.cpu()``, ``.tolist()``, numpy, ``bool()``/``float()`` of a tensor) happens.

Scales. ε = 1e-8 is absolute, so F is not scale-free, and wᵀKw can only be evaluated to ~T·ε_mach·|w|ᵀ|K||w|:
where rows conflict (0 in their hull) and ‖K‖ ≳ 1e6 the optimum has wᵀKw ~ ε, below that rounding, and every
solver compares noise. Hence K spans 2^-20 … 2^20 (≈ 1e-6 … 1e6), rank-deficient and duplicate families are
built from integer rows (K exact in float64, truly PSD and singular), and every objective comparison allows
the float64 rounding of F on top of the relative 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from densemtl.weighting import StepContext, TrainInfo, build_weighting
from densemtl.weighting.cagrad import SQRT_EPS, cagrad_objective, cagrad_weights
from densemtl.weighting.simplex_qp import MAX_ENUMERATION_TASKS
from densemtl.weighting.solvers import reference_cagrad_weights, reference_min_norm_simplex

F64 = torch.float64
EPS = np.finfo(np.float64).eps
KINDS = ("full_rank", "rank_deficient", "duplicate_rows", "zero_row", "near_duplicate", "near_parallel", "low_dim")
SCALES = (2.0**-20, 2.0**-10, 1.0, 2.0**10, 2.0**20)
RADII = (0.1, 0.4, 2.0, 10.0)  # c; c_abs = c‖g_0‖ + 1e-8 as in CAGrad


def _gram(kind: str, t: int, rng: np.random.Generator) -> np.ndarray:
    """A PSD Gramian K (T, T) of the given family; singular families from integer rows (exact in float64)."""
    if kind == "rank_deficient":
        g = rng.integers(-8, 9, size=(t, max(1, t // 2))).astype(np.float64)
    elif kind == "low_dim":  # T rows in the plane: 0 often lies in their hull (conflict)
        g = rng.integers(-8, 9, size=(t, 2)).astype(np.float64)
    elif kind in ("duplicate_rows", "zero_row"):
        g = rng.integers(-8, 9, size=(t, t + 1)).astype(np.float64)
    else:
        g = rng.normal(size=(t, t + 2)) * np.exp(rng.normal(size=(t, 1)))  # uneven row norms
    if kind == "duplicate_rows":
        g[-1] = g[0]
    if kind == "zero_row":
        g[t // 2] = 0.0
    if kind == "near_duplicate":
        g[-1] = g[0] + 1e-9 * rng.normal(size=g.shape[1])
    if kind == "near_parallel":
        g[-1] = -0.7 * g[0] + 1e-6 * rng.normal(size=g.shape[1])
    return g @ g.T


def _cases(seed: int, per_kind: int):
    """(kind, K, c_abs) over the families, T = 2..8, the scales and the radii."""
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for n in range(per_kind):
            t = 2 + (n + KINDS.index(kind)) % 7
            k = _gram(kind, t, rng) * SCALES[n % len(SCALES)]
            c = RADII[(n // len(SCALES) + n) % len(RADII)]
            yield kind, k, c * math.sqrt(max(k.mean(), 0.0) + SQRT_EPS) + SQRT_EPS


def _objective(k: np.ndarray, w: np.ndarray, c_abs: float) -> float:
    """F(w) in numpy."""
    return float(w @ k.mean(axis=1) + c_abs * math.sqrt(max(w @ k @ w, 0.0) + SQRT_EPS))


def _rounding(k: np.ndarray, w: np.ndarray, c_abs: float) -> float:
    """Float64 rounding scale of F(w): T·ε_mach·(|w|ᵀ|b| + c_abs·|w|ᵀ|K||w| / (2r) + c_abs·r), r = √(wᵀKw + ε)."""
    r = math.sqrt(max(w @ k @ w, 0.0) + SQRT_EPS)
    a = np.abs(w)
    return k.shape[0] * EPS * (a @ np.abs(k.mean(axis=1)) + c_abs * (a @ np.abs(k) @ a) / (2 * r) + c_abs * r)


def _frank_wolfe_gap(k: np.ndarray, w: np.ndarray, c_abs: float) -> float:
    """wᵀ∇F − min_j ∇F_j ≥ F(w) − F* (0 at the optimum), relative to the gradient's scale."""
    r = math.sqrt(max(w @ k @ w, 0.0) + SQRT_EPS)
    grad = k.mean(axis=1) + c_abs * (k @ w) / r
    scale = np.abs(k.mean(axis=1)).max() + c_abs * (np.abs(k) @ w).max() / r
    return float((w @ grad - grad.min()) / scale)


def _slsqp(k: np.ndarray, c_abs: float, start: np.ndarray) -> np.ndarray:
    """SLSQP (exact gradient, ftol 1e-14) from ``start``: an independent second run of the reference method."""
    b = k.mean(axis=1)

    def fun(w):
        q = math.sqrt(max(w @ k @ w, 0.0) + SQRT_EPS)
        return float(w @ b + c_abs * q), b + c_abs * (k @ w) / q

    res = minimize(
        fun,
        start,
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k.shape[0],
        constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
        options={"ftol": 1e-14, "maxiter": 500},
    )
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


def _device(k: np.ndarray, c_abs: float) -> np.ndarray:
    return cagrad_weights(torch.tensor(k), c_abs).numpy()


def _assert_feasible(w: np.ndarray) -> None:
    assert w.min() >= 0.0 and w.sum() == pytest.approx(1.0, abs=1e-14)


# -------------------------------------------------------------------------------------------- the dual solve
def test_cagrad_weights_are_no_worse_than_scipy_on_many_gramians():
    n_better = 0
    for kind, k, c_abs in _cases(0, per_kind=20):
        t = k.shape[0]
        w = _device(k, c_abs)
        _assert_feasible(w)
        refs = [reference_cagrad_weights(k, c_abs), _slsqp(k, c_abs, np.eye(t)[0])]
        f, f_ref = _objective(k, w, c_abs), min(_objective(k, r, c_abs) for r in refs)
        tol = 1e-10 * abs(f_ref) + 64 * max(_rounding(k, x, c_abs) for x in (w, *refs))
        assert f <= f_ref + tol, (kind, t, f, f_ref, tol)
        if f < f_ref - tol:  # SciPy stopped short: the device answer is certified by its Frank–Wolfe gap
            n_better += 1
            assert _frank_wolfe_gap(k, w, c_abs) <= 1e-9, (kind, t)
    assert n_better > 0  # the certificate branch is exercised (SLSQP often stops early on singular K)


def test_cagrad_weights_are_kkt_points_on_well_conditioned_gramians():
    rng = np.random.default_rng(1)
    for t in range(2, 9):
        for c in RADII:
            g = rng.normal(size=(t, t + 3))
            k = g @ g.T
            c_abs = c * math.sqrt(k.mean() + SQRT_EPS) + SQRT_EPS
            w = _device(k, c_abs)
            _assert_feasible(w)
            assert _frank_wolfe_gap(k, w, c_abs) <= 1e-12, (t, c)
            ref = _slsqp(k, c_abs, np.full(t, 1.0 / t))  # unique optimum (K positive definite)
            np.testing.assert_allclose(w, ref, atol=1e-6)


def test_cagrad_weights_two_tasks_match_a_scalar_minimisation():
    rng = np.random.default_rng(2)
    for n in range(30):
        g = rng.normal(size=(2, 3)) * SCALES[n % len(SCALES)] ** 0.5
        k = g @ g.T
        c_abs = RADII[n % len(RADII)] * math.sqrt(k.mean() + SQRT_EPS) + SQRT_EPS
        res = minimize_scalar(
            lambda a, k=k, c_abs=c_abs: _objective(k, np.array([a, 1 - a]), c_abs),
            bounds=(0.0, 1.0),
            method="bounded",
            options={"xatol": 1e-13},
        )
        w = _device(k, c_abs)
        ends = [_objective(k, np.array(x), c_abs) for x in ([1.0, 0.0], [0.0, 1.0])]
        f_ref = min(res.fun, *ends)
        assert _objective(k, w, c_abs) <= f_ref + 1e-10 * abs(f_ref) + 64 * _rounding(k, w, c_abs)


def test_cagrad_weights_limits_of_the_radius():
    rng = np.random.default_rng(3)
    for t in (2, 4, 7):
        g = rng.normal(size=(t, 3))
        k = g @ g.T
        b = k.mean(axis=1)
        # c_abs = 0: a minimiser of the linear wᵀb, here the vertex of the least b_t
        w = _device(k, 0.0)
        assert w @ b == pytest.approx(b.min(), abs=1e-14 * np.abs(b).max())
        assert w[np.argmin(b)] == 1.0
        # c_abs → ∞: F/c_abs → √(wᵀKw + ε), so w → MGDA's min-norm point
        w = _device(k, 1e8 * math.sqrt(np.abs(k).max()))
        alpha = reference_min_norm_simplex(k)
        assert w @ k @ w <= alpha @ k @ alpha * (1 + 1e-7) + 1e-12 * np.abs(k).max()


def test_cagrad_weights_degenerate_inputs():
    # K = 0: F = c_abs √ε everywhere; any feasible point
    w = cagrad_weights(torch.zeros(4, 4, dtype=F64), 0.3)
    assert w.min() >= 0 and float(w.sum()) == pytest.approx(1.0)
    # T = 1
    assert cagrad_weights(torch.tensor([[3.0]], dtype=F64), 0.5).tolist() == [1.0]
    # a zero row with c‖g_0‖ large: the optimum puts all weight on it (wᵀKw = 0, wᵀb = 0 is then least)
    g = np.array([[1.0, 2.0], [0.0, 0.0], [2.0, 1.0]])
    k = g @ g.T
    w = _device(k, 10 * math.sqrt(k.mean() + SQRT_EPS))
    assert w.tolist() == [0.0, 1.0, 0.0]
    # float32 in, float64 out, same answer as the float64 input
    k32 = torch.tensor(k, dtype=torch.float32)
    assert cagrad_weights(k32, 0.5).dtype == F64
    np.testing.assert_array_equal(cagrad_weights(k32, 0.5).numpy(), _device(k32.double().numpy(), 0.5))


def test_cagrad_objective_matches_numpy():
    rng = np.random.default_rng(4)
    g = rng.normal(size=(5, 3))
    k = g @ g.T
    w = rng.dirichlet(np.ones(5), size=3)
    got = cagrad_objective(torch.tensor(k), torch.tensor(w), 0.7).numpy()
    np.testing.assert_allclose(got, [_objective(k, x, 0.7) for x in w], rtol=1e-14)


def test_cagrad_weights_reject_bad_shapes_and_too_many_tasks():
    with pytest.raises(ValueError, match="square"):
        cagrad_weights(torch.zeros(2, 3, dtype=F64), 0.1)
    t = MAX_ENUMERATION_TASKS + 1
    with pytest.raises(ValueError, match=f"T = {t}"):
        cagrad_weights(torch.eye(t, dtype=F64), 0.1)


def test_cagrad_weights_are_bitwise_deterministic():
    for _, k, c_abs in _cases(5, per_kind=3):
        kt = torch.tensor(k)
        assert torch.equal(cagrad_weights(kt, c_abs), cagrad_weights(kt.clone(), torch.tensor(c_abs, dtype=F64)))


# --------------------------------------------------------------------------------------- the CAGrad method
def _cagrad(t: int, args: dict | None = None):
    tasks = tuple(f"t{i}" for i in range(t))
    m = build_weighting("cagrad", args, tasks=tasks)
    m.on_train_start(TrainInfo(tasks=tasks, seed=0))
    return m, StepContext(epoch=1, step=1, loss_values=torch.ones(t, dtype=F64))


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad_coefficients_follow_the_spec_from_numpy(rescale):
    rng = np.random.default_rng(6)
    for t in (2, 3, 5):
        g = rng.normal(size=(t, 4))
        k = g @ g.T
        m, ctx = _cagrad(t, {"c": 0.5, "rescale": rescale})
        agg = m.weights(torch.tensor(k), {}, ctx)
        w = agg.weights.numpy()
        c_abs = 0.5 * math.sqrt(k.mean() + 1e-8) + 1e-8
        np.testing.assert_allclose(w, reference_cagrad_weights(k, c_abs), atol=1e-6)  # K positive definite
        lam = c_abs / (math.sqrt(w @ k @ w) + 1e-8)
        rho = (1.0, 1.25, 1.5)[rescale]
        np.testing.assert_allclose(agg.coefficients.numpy(), (1 / t + lam * w) / rho, rtol=1e-12)
        assert torch.equal(agg.coefficients, agg.effective)


def test_cagrad_falls_back_to_the_host_reference_above_the_enumeration_limit():
    t = MAX_ENUMERATION_TASKS + 1
    g = np.random.default_rng(7).normal(size=(t, 5))
    k = g @ g.T
    m, ctx = _cagrad(t)
    w = m.weights(torch.tensor(k), {}, ctx).weights.numpy()
    np.testing.assert_array_equal(w, reference_cagrad_weights(k, 0.4 * math.sqrt(k.mean() + 1e-8) + 1e-8))


def test_cagrad_runs_without_host_sync(no_host_sync):
    g = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.1, -0.4, 2.0], [-1.0, -0.8, -2.0]], dtype=F64)
    k = g @ g.T
    w = cagrad_weights(k, torch.tensor(0.3, dtype=F64))
    outs = [w]
    for args in (None, {"c": 0.0}, {"c": 0.5, "rescale": 2}):
        m, ctx = _cagrad(4, args)
        outs.append(m.weights(k.float(), {}, ctx).coefficients)
    assert all(o.shape == (4,) for o in outs)  # values: the other tests


def test_the_host_fallback_is_caught_by_the_fixture(no_host_sync):
    t = MAX_ENUMERATION_TASKS + 1
    m, ctx = _cagrad(t)
    with pytest.raises(AssertionError, match="host synchronisation"):
        m.weights(torch.eye(t), {}, ctx)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: torch.cuda.set_sync_debug_mode")
def test_cagrad_does_not_synchronise_cuda():
    g = torch.randn(6, 9, dtype=F64, device="cuda")
    k = g @ g.T
    m, ctx = _cagrad(6)
    m.weights(k, {}, ctx)  # warm the mask cache
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = m.weights(k, {}, ctx).weights
    finally:
        torch.cuda.set_sync_debug_mode("default")
    k_host = k.cpu().numpy()
    c_abs = 0.4 * math.sqrt(k_host.mean() + 1e-8) + 1e-8
    ref = reference_cagrad_weights(k_host, c_abs)
    w_host = w.cpu().numpy()
    tol = 1e-10 * abs(_objective(k_host, ref, c_abs)) + 64 * _rounding(k_host, ref, c_abs)
    assert _objective(k_host, w_host, c_abs) <= _objective(k_host, ref, c_abs) + tol
    assert torch.equal(w, m.weights(k, {}, ctx).weights)
