"""The on-device fp64 QP solvers of ``weighting/simplex_qp.py`` (MGDA's simplex QP, UPGrad's projections).

Checked against independent computations: SciPy's active-set NNLS (the host reference in ``weighting/solvers.py``),
numpy KKT conditions, and the T = 2 closed form of ``spec/weighting.md`` §3.2. Also: feasibility, scale invariance,
bitwise determinism, and that no host synchronisation (``.item()``, ``.cpu()``, ``.tolist()``, numpy, ``bool()``
of a tensor) happens inside a call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from densemtl.weighting import StepContext, TrainInfo, build_weighting
from densemtl.weighting.simplex_qp import (
    MAX_ENUMERATION_TASKS,
    lower_bounded_min_norm,
    simplex_min_norm,
    subset_masks,
)
from densemtl.weighting.solvers import reference_lower_bounded_qp, reference_min_norm_simplex
from densemtl.weighting.upgrad import reference_upgrad_weights, upgrad_weights

F64 = torch.float64
EPS = np.finfo(np.float64).eps
KINDS = ("full_rank", "rank_deficient", "duplicate_rows", "zero_row", "near_duplicate")
SCALES = (1e-150, 1e-30, 1.0, 1e30, 1e150)


def _gram(kind: str, t: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(K (T, T), whether the minimisers are unique: K positive definite) for a family of PSD Gramians."""
    if kind == "rank_deficient":
        g = rng.normal(size=(t, max(1, t // 2)))
    else:
        g = rng.normal(size=(t, t + 2)) * np.exp(rng.normal(size=(t, 1)))  # uneven row norms
    if kind == "duplicate_rows":
        g[-1] = g[0]
    if kind == "zero_row":
        g[t // 2] = 0.0
    if kind == "near_duplicate":
        g[-1] = g[0] + 1e-9 * rng.normal(size=g.shape[1])
    return g @ g.T, kind == "full_rank"


def _cases(seed: int, per_kind: int = 10):
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for n in range(per_kind):
            t = 2 + (n + KINDS.index(kind)) % 7  # T = 2..8
            k, unique = _gram(kind, t, rng)
            yield kind, k, unique, SCALES[n % len(SCALES)]


def _rounding(k: np.ndarray, *xs: np.ndarray) -> float:
    """The float64 rounding scale of xᵀKx near the optimum: T·ε·max|K|·max‖x‖₁² (any solver's accuracy)."""
    return k.shape[0] * EPS * np.abs(k).max() * max(np.abs(x).sum() ** 2 for x in xs)


def _assert_same_objective(k: np.ndarray, x: np.ndarray, ref: np.ndarray, ref_gap: float = 0.0) -> None:
    """xᵀKx equals the reference's objective to 1e-10 relative (plus rounding), or is lower by at most ``ref_gap``.

    ``ref_gap`` is an upper bound on the reference's own suboptimality (its Frank–Wolfe gap for the simplex QP):
    for nearly parallel rows SciPy's answer can be worse by ~1e-9 relative.
    """
    f, f_ref = x @ k @ x, ref @ k @ ref
    tol = 1e-10 * abs(f_ref) + 64 * _rounding(k, x, ref)
    assert f_ref - ref_gap - tol <= f <= f_ref + tol, (f, f_ref, ref_gap)


def _simplex_gap(k: np.ndarray, x: np.ndarray) -> float:
    """Frank–Wolfe gap 2(xᵀKx − min_j (Kx)_j) ≥ f(x) − f* of f = xᵀKx at x on the simplex (0 at the optimum)."""
    return float(2 * (x @ k @ x - (k @ x).min()))


# ------------------------------------------------------------------------------------------- MGDA simplex QP
def test_simplex_min_norm_matches_the_scipy_reference_on_many_gramians():
    for kind, k, unique, scale in _cases(0):
        alpha = simplex_min_norm(torch.tensor(k * scale)).numpy()
        ref = reference_min_norm_simplex(k)  # the reference on the unscaled K: the minimisers are scale-free
        assert alpha.min() >= 0.0 and alpha.sum() == pytest.approx(1.0, abs=1e-14), kind
        _assert_same_objective(k, alpha, ref, ref_gap=max(_simplex_gap(k, ref), 0.0))
        # KKT (numpy): (Kα)_j ≥ αᵀKα for every j, i.e. no vertex improves on α
        assert _simplex_gap(k, alpha) <= 64 * _rounding(k, alpha), kind
        if unique:
            np.testing.assert_allclose(alpha, ref, atol=1e-7)


def test_simplex_min_norm_two_tasks_is_the_closed_form():
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = rng.normal(size=(2, 3))
        d = g[0] - g[1]
        a1 = np.clip((g[1] - g[0]) @ g[1] / (d @ d), 0.0, 1.0)  # spec §3.2, exact [0, 1]
        alpha = simplex_min_norm(torch.tensor(g @ g.T)).numpy()
        np.testing.assert_allclose(alpha, [a1, 1 - a1], atol=1e-12)


def test_simplex_min_norm_degenerate_inputs():
    # K = 0: every α is optimal; the deterministic choice is a vertex or a point of the simplex
    alpha = simplex_min_norm(torch.zeros(4, 4, dtype=F64))
    assert alpha.min() >= 0 and float(alpha.sum()) == pytest.approx(1.0)
    # T = 1
    assert simplex_min_norm(torch.tensor([[3.0]], dtype=F64)).tolist() == [1.0]
    # exact duplicate of the minimum-norm row: it alone is optimal, objective = its squared norm
    g = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    alpha = simplex_min_norm(torch.tensor(g @ g.T)).numpy()
    assert alpha @ (g @ g.T) @ alpha == pytest.approx(1.0, abs=1e-14) and alpha[2] == 0.0
    # a zero row makes the optimum 0
    g = np.array([[1.0, 2.0], [0.0, 0.0], [-3.0, 1.0]])
    alpha = simplex_min_norm(torch.tensor(g @ g.T)).numpy()
    assert alpha.tolist() == [0.0, 1.0, 0.0]


def test_simplex_min_norm_accepts_float32_and_returns_float64():
    g = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    alpha = simplex_min_norm(g @ g.T)
    assert alpha.dtype == F64
    np.testing.assert_allclose(alpha.numpy(), [0.2, 0.8], atol=1e-12)


def test_simplex_min_norm_rejects_bad_shapes_and_too_many_tasks():
    with pytest.raises(ValueError, match="square"):
        simplex_min_norm(torch.zeros(2, 3, dtype=F64))
    t = MAX_ENUMERATION_TASKS + 1
    with pytest.raises(ValueError, match=f"T = {t}"):
        simplex_min_norm(torch.eye(t, dtype=F64))


# ------------------------------------------------------------------------------------- UPGrad's projections
def test_lower_bounded_min_norm_matches_the_scipy_reference_on_many_gramians():
    for kind, k, unique, scale in _cases(2):
        t = k.shape[0]
        lower = np.eye(t) / t
        v = lower_bounded_min_norm(torch.tensor(k * scale), torch.tensor(lower)).numpy()
        for i in range(t):
            ref = reference_lower_bounded_qp(k, lower[i])
            assert (v[i] >= lower[i]).all(), kind
            _assert_same_objective(k, v[i], ref)
            # KKT (numpy): μ = Kv ≥ 0, and μ_j = 0 where v_j > b_j
            mu = k @ v[i]
            tol = 64 * _rounding(k, v[i]) / max(np.abs(v[i]).max(), 1e-300)
            assert mu.min() >= -tol, kind
            free = v[i] > lower[i] + 1e-12
            assert np.abs(mu[free]).max(initial=0.0) <= tol, kind
            if unique:
                np.testing.assert_allclose(v[i], ref, atol=1e-7)


def test_lower_bounded_min_norm_general_bounds():
    rng = np.random.default_rng(3)
    for t in (2, 4, 7):
        g = rng.normal(size=(t, t + 1))
        k = g @ g.T
        lower = rng.normal(size=(5, t))  # any signs
        v = lower_bounded_min_norm(torch.tensor(k), torch.tensor(lower)).numpy()
        for n in range(5):
            np.testing.assert_allclose(v[n], reference_lower_bounded_qp(k, lower[n]), atol=1e-8)


def test_upgrad_weights_match_the_reference_and_the_spec_properties():
    for kind, k, _, scale in _cases(4, per_kind=3):
        t = k.shape[0]
        w = upgrad_weights(torch.tensor(k * scale)).numpy()
        ref = reference_upgrad_weights(k * scale)
        np.testing.assert_allclose(w, ref, rtol=1e-8, atol=1e-10, err_msg=kind)  # K̂ + 1e-4 I: unique
        assert (w >= 1 / t - 1e-12).all()
        w0 = upgrad_weights(torch.tensor(k), reg_eps=0.0).numpy()
        assert (w0 >= 1 / t - 1e-12).all() and (k @ w0 >= -1e-9 * np.trace(k)).all(), kind


def test_lower_bounded_min_norm_rejects_bad_bounds():
    with pytest.raises(ValueError, match="lower"):
        lower_bounded_min_norm(torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64))


# ------------------------------------------------------------------------------- determinism and host syncs
def test_solvers_are_bitwise_deterministic():
    for _, k, _, scale in _cases(5, per_kind=2):
        kt = torch.tensor(k * scale)
        assert torch.equal(simplex_min_norm(kt), simplex_min_norm(kt.clone()))
        lower = torch.eye(k.shape[0], dtype=F64)
        assert torch.equal(lower_bounded_min_norm(kt, lower), lower_bounded_min_norm(kt.clone(), lower))


def test_subset_masks_order_and_count():
    masks = subset_masks(3, torch.device("cpu"))
    assert masks.int().tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert subset_masks(5, torch.device("cpu"), include_empty=True).shape == (32, 5)


def test_the_fixture_catches_host_syncs(no_host_sync):
    with pytest.raises(AssertionError, match="host synchronisation"):
        torch.ones(2).sum().item()
    with pytest.raises(AssertionError, match="host synchronisation"):
        bool(torch.ones(1) > 0)
    # the host fallback above MAX_ENUMERATION_TASKS (the former per-step path) is caught
    t = MAX_ENUMERATION_TASKS + 1
    tasks = tuple(f"t{i}" for i in range(t))
    m = build_weighting("mgda", None, tasks=tasks)
    with pytest.raises(AssertionError, match="host synchronisation"):
        m.weights(torch.eye(t), {}, StepContext(epoch=1, step=1, loss_values=torch.ones(t)))


def test_solvers_and_methods_run_without_host_sync(no_host_sync):
    g = torch.tensor([[1.0, 0.2, 0.0], [-0.5, 1.0, 0.3], [0.1, -0.4, 2.0], [0.3, 0.3, 0.3]], dtype=F64)
    k = g @ g.T
    alpha = simplex_min_norm(k)
    v = lower_bounded_min_norm(k, torch.eye(4, dtype=F64) / 4)
    tasks = ("a", "b", "c", "d")
    losses = {t: torch.tensor(1.0, dtype=F64) for t in tasks}
    outs = []
    for name, args in (
        ("mgda", None),
        ("mgda", {"normalize": "loss+"}),
        ("upgrad", None),
        ("pcgrad", None),
        ("cagrad", None),
    ):
        m = build_weighting(name, args, tasks=tasks)
        m.on_train_start(TrainInfo(tasks=tasks, seed=0))
        ctx = StepContext(epoch=1, step=1, loss_values=torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=F64))
        outs.append(m.weights(k.float(), losses, ctx).coefficients)
    assert all(o.shape == (4,) for o in (alpha, *outs)) and v.shape == (4, 4)  # checked in the other tests


@pytest.mark.parametrize("name", ["mgda", "upgrad"])
def test_methods_fall_back_to_the_host_reference_above_the_enumeration_limit(name):
    t = MAX_ENUMERATION_TASKS + 1
    g = np.random.default_rng(6).normal(size=(t, 5))
    k = torch.tensor(g @ g.T)
    tasks = tuple(f"t{i}" for i in range(t))
    m = build_weighting(name, None, tasks=tasks)
    m.on_train_start(TrainInfo(tasks=tasks, seed=0))
    w = m.weights(k, {}, StepContext(epoch=1, step=1, loss_values=torch.ones(t, dtype=F64))).weights.numpy()
    ref = reference_min_norm_simplex(k.numpy()) if name == "mgda" else reference_upgrad_weights(k.numpy())
    np.testing.assert_array_equal(w, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: torch.cuda.set_sync_debug_mode")
def test_solvers_do_not_synchronise_cuda():
    g = torch.randn(6, 9, dtype=F64, device="cuda")
    k = g @ g.T
    simplex_min_norm(k), lower_bounded_min_norm(k, torch.eye(6, dtype=F64, device="cuda"))  # warm the cache
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        alpha = simplex_min_norm(k)
        w = upgrad_weights(k)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = reference_min_norm_simplex(k.cpu().numpy())
    _assert_same_objective(k.cpu().numpy(), alpha.cpu().numpy(), ref)
    np.testing.assert_allclose(w.cpu().numpy(), reference_upgrad_weights(k.cpu().numpy()), rtol=1e-8)
