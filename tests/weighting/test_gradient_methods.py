"""Gradient-based methods on the Gramian / rows: closed forms of ``spec/weighting.md`` §4.1 (float64, CPU) and the
cross-cutting properties of §4.2 (determinism, ``state_dict`` round trip, permutation equivariance, dispatch).

Expected values are the spec's hand-derived numbers or independent computations (numpy / brute force).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from densemtl.weighting import Kind, StepContext, StepEnd, TrainInfo, build_weighting
from densemtl.weighting.base import EpochStats
from densemtl.weighting.gradnorm import gradnorm_loss_and_grad
from densemtl.weighting.pcgrad import pcgrad_coefficients
from densemtl.weighting.solvers import min_norm_simplex, nash_bargaining

F64 = torch.float64
ORTHONORMAL = [(1.0, 0.0), (0.0, 1.0)]
CONFLICT = [(1.0, 0.0), (-1.0, 1.0)]
GRADIENT_METHODS = ["mgda", "pcgrad", "cagrad", "imtl", "nash_mtl", "aligned_mtl", "upgrad", "gradnorm", "db_mtl"]


def _method(name: str, args: dict | None = None, t: int = 2, seed: int = 0):
    tasks = tuple(f"t{i}" for i in range(t))
    w = build_weighting(name, args, tasks=tasks)
    w.on_train_start(TrainInfo(tasks=tasks, seed=seed))
    return w


def _losses(t: int, values=None) -> dict:
    values = values or [1.0] * t
    return {f"t{i}": torch.tensor(float(v), dtype=F64) for i, v in enumerate(values)}


def _run(name, rows, args=None, loss_values=None, seed=0, method=None, step=1):
    """(aggregation, update u, method) for rows G given as a list of tuples (float64)."""
    g = torch.tensor(rows, dtype=F64)
    t = g.shape[0]
    w = method or _method(name, args, t, seed)
    lv = torch.tensor(loss_values, dtype=F64) if loss_values is not None else torch.ones(t, dtype=F64)
    ctx = StepContext(epoch=1, step=step, loss_values=lv, generator=w.generator)
    if w.kind is Kind.TASK_GRADS:
        agg = w.aggregate(g, _losses(t, loss_values), ctx)
    else:
        agg = w.weights(g @ g.T, _losses(t, loss_values), ctx)
    u = agg.update if agg.update is not None else agg.coefficients.to(F64) @ g
    return agg, u, w


def _close(x, expected, tol=1e-6):
    assert torch.as_tensor(x, dtype=F64).numpy() == pytest.approx(np.asarray(expected, dtype=np.float64), abs=tol)


# ---------------------------------------------------------------------------------------------------------- MGDA
@pytest.mark.parametrize(
    ("rows", "alpha", "u"),
    [
        (ORTHONORMAL, (0.5, 0.5), (0.5, 0.5)),
        ([(2.0, 0.0), (0.0, 1.0)], (0.2, 0.8), (0.4, 0.8)),
        (CONFLICT, (0.6, 0.4), (0.2, 0.4)),
        ([(1.0, 0.0), (2.0, 0.0)], (1.0, 0.0), (1.0, 0.0)),
    ],
)
def test_mgda_closed_forms(rows, alpha, u):
    agg, upd, _ = _run("mgda", rows)
    _close(agg.weights, alpha, 1e-12)
    _close(upd, u, 1e-12)
    g = torch.tensor(rows, dtype=F64)
    if alpha[1] > 0:  # interior optimum: equal inner products ⟨u, g_t⟩ = ‖u‖²
        _close(g @ upd, [float(upd @ upd)] * 2, 1e-12)


def test_mgda_first_order_pair_is_exactly_one_zero():
    agg, _, _ = _run("mgda", [(1.0, 0.0), (2.0, 0.0)])
    assert agg.weights.tolist() == [1.0, 0.0]


def test_mgda_l2_normalisation_effective_coefficients():
    agg, _, _ = _run("mgda", [(2.0, 0.0), (0.0, 1.0)], {"normalize": "l2"})
    _close(agg.weights, (0.5, 0.5), 1e-12)
    _close(agg.coefficients, (0.25, 0.5), 1e-12)


@pytest.mark.parametrize("solver", ["host", "device"])
def test_mgda_simplex_qp_matches_brute_force_optimum(solver):
    """The host reference (SciPy NNLS) and the device enumeration (``simplex_qp``) both reach the optimum."""
    from densemtl.weighting.simplex_qp import simplex_min_norm

    solve = min_norm_simplex if solver == "host" else (lambda k: simplex_min_norm(torch.tensor(k)).numpy())
    rng = np.random.default_rng(0)
    for t in (3, 4, 6, 8):
        g = rng.normal(size=(t, 5))
        k = g @ g.T
        w = solve(k)
        assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
        # independent optimum: SLSQP at a very tight tolerance from many starts
        best = min(
            minimize(
                lambda x, k=k: x @ k @ x,
                s / s.sum(),
                jac=lambda x, k=k: 2 * k @ x,
                method="SLSQP",
                bounds=[(0, 1)] * t,
                constraints=({"type": "eq", "fun": lambda x: x.sum() - 1},),
                options={"ftol": 1e-16, "maxiter": 1000},
            ).fun
            for s in rng.uniform(0.1, 1, size=(5, t))
        )
        assert w @ k @ w <= best * (1 + 1e-9) + 1e-15


# -------------------------------------------------------------------------------------------------------- PCGrad
def test_pcgrad_conflicting_pair():
    agg, u, _ = _run("pcgrad", CONFLICT)
    _close(u, (0.5, 1.5), 1e-12)
    _close(agg.weights, (2.0, 1.5), 1e-12)


def test_pcgrad_without_conflict_is_the_sum():
    rows = [(1.0, 0.2, 0.0), (0.5, 1.0, 0.1), (0.1, 0.3, 2.0)]
    _, u, _ = _run("pcgrad", rows)
    _close(u, np.sum(rows, axis=0), 1e-12)


def _pcgrad_rows_reference(g: np.ndarray, orders) -> np.ndarray:
    """Row-based PCGrad: project each ĝ_i on the normal plane of the original g_j when they conflict."""
    out = []
    for i in range(g.shape[0]):
        gi = g[i].copy()
        for j in orders[i]:
            dot = gi @ g[j]
            if dot < 0:
                gi -= dot / (g[j] @ g[j]) * g[j]
        out.append(gi)
    return np.sum(out, axis=0)


def test_pcgrad_gram_tracking_equals_row_based_reference():
    rng = np.random.default_rng(1)
    for t in (3, 5):
        g = rng.normal(size=(t, 7))
        orders = [list(rng.permutation(t)) for _ in range(t)]
        coef = pcgrad_coefficients(torch.from_numpy(g @ g.T), orders).numpy()
        assert coef.sum(axis=0) @ g == pytest.approx(_pcgrad_rows_reference(g, orders), abs=1e-10)


def test_pcgrad_draws_from_its_own_generator():
    rows = [(1.0, 0.0, 0.3), (-1.0, 1.0, 0.0), (0.2, -1.0, 0.5)]
    state = torch.get_rng_state()
    a = [_run("pcgrad", rows, method=m)[1] for m in [_method("pcgrad", t=3, seed=5)] * 3]
    b = [_run("pcgrad", rows, method=m)[1] for m in [_method("pcgrad", t=3, seed=5)] * 3]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# -------------------------------------------------------------------------------------------------------- CAGrad
def test_cagrad_c0_is_the_mean():
    rows = [(1.0, 0.0), (-1.0, 1.0), (0.5, 2.0)]
    _, u, _ = _run("cagrad", rows, {"c": 0.0})
    _close(u, np.mean(rows, axis=0), 1e-7)


@pytest.mark.parametrize(
    ("rows", "w", "u"), [(ORTHONORMAL, (0.5, 0.5), (0.603448, 0.603448)), (CONFLICT, (1.0, 0.0), (0.172414, 0.431034))]
)
def test_cagrad_closed_forms(rows, w, u):
    agg, upd, _ = _run("cagrad", rows, {"c": 0.4})
    _close(agg.weights, w, 1e-5)
    _close(upd, u, 1e-6)


def test_cagrad_objective_is_optimal_against_a_grid():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(2, 4))
    k = g @ g.T
    agg, _, m = _run("cagrad", [tuple(r) for r in g])
    c_abs = 0.4 * math.sqrt(k.mean() + 1e-8) + 1e-8

    def obj(w):
        return w @ k.mean(axis=1) + c_abs * math.sqrt(w @ k @ w + 1e-8)

    a = np.linspace(0, 1, 200001)
    w = np.stack([a, 1 - a], axis=1)
    quad = np.einsum("ni,ij,nj->n", w, k, w)
    grid = float((w @ k.mean(axis=1) + c_abs * np.sqrt(quad + 1e-8)).min())
    assert obj(agg.weights.numpy()) <= grid + 1e-8 * abs(grid)


# ---------------------------------------------------------------------------------------------------------- IMTL
def test_imtl_g_closed_forms():
    agg, u, _ = _run("imtl", [(2.0, 0.0), (0.0, 1.0)], {"variant": "G"})
    _close(agg.weights, (1 / 3, 2 / 3), 1e-12)
    _close(u, (2 / 3, 2 / 3), 1e-12)
    agg, u, _ = _run("imtl", CONFLICT, {"variant": "G"})
    r2 = math.sqrt(2)
    _close(agg.weights, (2 - r2, r2 - 1), 1e-12)
    _close(u, (0.171573, 0.414214), 1e-6)
    q = torch.tensor(CONFLICT, dtype=F64)
    q = q / q.norm(dim=1, keepdim=True)
    _close(q @ u, [3 - 2 * r2] * 2, 1e-12)  # equal projections on the unit gradients


def test_imtl_equal_projections_for_three_tasks():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 5))
    agg, u, _ = _run("imtl", [tuple(r) for r in g], {"variant": "G"})
    proj = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ u.numpy()
    assert proj == pytest.approx([proj[0]] * 3, abs=1e-10)
    assert float(agg.weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_imtl_l_fixed_point():
    m = _method("imtl", {"variant": "hybrid"}, 2)
    values = [0.5, 2.0]
    with torch.no_grad():
        m.log_scales.copy_(-torch.log(torch.tensor(values)))
    f = m.task_objectives({f"t{i}": torch.tensor(v) for i, v in enumerate(values)})
    (grad,) = torch.autograd.grad(f["t0"] + f["t1"], m.log_scales)
    _close(grad, (0.0, 0.0), 1e-6)


# ------------------------------------------------------------------------------------------------------ Nash-MTL
def test_nash_mtl_closed_forms():
    agg, _, _ = _run("nash_mtl", [(2.0, 0.0), (0.0, 1.0)])
    _close(agg.weights, (0.5, 1.0), 1e-6)
    agg, u, _ = _run("nash_mtl", [(1.0, 0.0), (1.0, 1.0)])
    a = (math.sqrt(2 - math.sqrt(2)), math.sqrt(1 - 1 / math.sqrt(2)))
    _close(agg.weights, a, 1e-6)
    _close(u, (1.306563, 0.541196), 1e-6)
    k = np.array([[1.0, 1.0], [1.0, 2.0]])
    w = agg.weights.numpy()
    assert w * (k @ w) == pytest.approx([1.0, 1.0], abs=1e-6)


def test_nash_mtl_random_gramians_meet_the_acceptance_residual():
    rng = np.random.default_rng(4)
    for t in (3, 5, 10):
        g = rng.normal(size=(t, 3 * t)) * rng.uniform(0.01, 100, size=(t, 1))
        k = g @ g.T
        alpha, res, _, ok = nash_bargaining(k)
        assert ok and np.all(alpha > 0)
        assert np.linalg.norm(k @ alpha - 1 / alpha) <= 1e-6 * np.linalg.norm(1 / alpha)


def test_nash_mtl_failure_reuses_previous_alpha_and_counts_it():
    m = _method("nash_mtl", t=2)
    agg, _, _ = _run("nash_mtl", [(1.0, 0.0), (-1.0, 0.0)], method=m)  # opposite rows: no solution exists
    _close(agg.weights, (1.0, 1.0), 0)
    assert m.failures == 1


def test_nash_mtl_update_every_reuses_alpha_between_updates():
    m = _method("nash_mtl", {"update_every": 2}, 2)
    assert m.needs(StepContext(epoch=0, step=1)) is Kind.GRAMIAN
    agg, _, _ = _run("nash_mtl", [(2.0, 0.0), (0.0, 1.0)], method=m)
    m.on_step_end(StepEnd(step_taken=True))
    assert m.needs(StepContext(epoch=0, step=2)) is Kind.LOSSES
    objective, weights = m.combine({"t0": torch.tensor(3.0), "t1": torch.tensor(5.0)}, StepContext(epoch=0, step=2))
    assert float(objective) == pytest.approx(0.5 * 3 + 1.0 * 5, abs=1e-6)


def test_nash_mtl_skipped_step_keeps_state():
    m = _method("nash_mtl", t=2)
    _run("nash_mtl", [(2.0, 0.0), (0.0, 1.0)], method=m)
    m.on_step_end(StepEnd(step_taken=False))
    assert m.alpha.tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------------------------------- Aligned-MTL
def test_aligned_mtl_closed_forms():
    agg, u, _ = _run("aligned_mtl", [(2.0, 0.0), (0.0, 1.0)])
    _close(agg.weights, (0.5, 1.0), 1e-12)
    _close(u, (1.0, 1.0), 1e-12)
    rows = [(1.0, 0.0), (1.0, 1.0)]
    agg, _, _ = _run("aligned_mtl", rows)
    s5 = math.sqrt(5)
    _close(agg.weights, ((5 - s5) / 5, (5 - s5) / 10), 1e-12)
    # (BG)(BG)ᵀ = λ_min I, with B from an independent numpy eigendecomposition
    g = np.array(rows)
    lam, v = np.linalg.eigh(g @ g.T)
    b = math.sqrt(lam.min()) * v @ np.diag(lam**-0.5) @ v.T
    assert (b @ g) @ (b @ g).T == pytest.approx(lam.min() * np.eye(2), abs=1e-12)
    assert b.sum(axis=1) == pytest.approx(agg.weights.numpy(), abs=1e-12)


def test_aligned_mtl_rank_deficient_keeps_rank_one():
    agg, u, _ = _run("aligned_mtl", [(1.0, 2.0), (1.0, 2.0)])
    # K = 5·11ᵀ: one kept eigenvalue 10 with v = (1, 1)/√2; B = vvᵀ, α = (1, 1)... scaled by √λ/√λ = 1
    _close(agg.weights, (1.0, 1.0), 1e-10)
    assert torch.isfinite(u).all()


# -------------------------------------------------------------------------------------------------------- UPGrad
def test_upgrad_closed_forms():
    agg, _, _ = _run("upgrad", [(1.0, 0.0, 0.0), (0.0, 2.0, 0.0), (0.0, 0.0, 0.5)])
    _close(agg.weights, (1 / 3, 1 / 3, 1 / 3), 1e-3)  # orthogonal rows: the mean (up to reg_eps)
    agg, u, _ = _run("upgrad", CONFLICT, {"reg_eps": 0.0})
    _close(agg.weights, (1.0, 0.75), 1e-10)
    _close(u, (0.25, 0.75), 1e-10)
    k = np.array([[1.0, -1.0], [-1.0, 2.0]])
    assert k @ agg.weights.numpy() == pytest.approx([0.25, 0.5], abs=1e-10)
    agg, _, _ = _run("upgrad", [(1.0, 0.0), (1.0, 1.0)], {"reg_eps": 0.0})
    _close(agg.weights, (0.5, 0.5), 1e-10)


def test_upgrad_random_gramians_are_non_conflicting():
    rng = np.random.default_rng(5)
    for t in (3, 5, 8):
        g = rng.normal(size=(t, 4))
        agg, _, _ = _run("upgrad", [tuple(r) for r in g], {"reg_eps": 0.0})
        w = agg.weights.numpy()
        assert np.all(w >= 1 / t - 1e-12)
        assert np.all((g @ g.T) @ w >= -1e-9)


# ------------------------------------------------------------------------------------------------------ GradNorm
def test_gradnorm_closed_form_loss_and_gradient():
    loss, grad = gradnorm_loss_and_grad(
        torch.zeros(2, dtype=F64), torch.tensor([2.0, 1.0], dtype=F64), torch.ones(2, dtype=F64), 1.5
    )
    assert float(loss) == pytest.approx(1.0, abs=1e-12)
    _close(grad, (1.5, -1.5), 1e-12)
    # the analytic gradient equals autograd's of L_grad with the target held constant
    p = torch.tensor([0.3, -0.2, 0.1], dtype=F64, requires_grad=True)
    n, r = torch.tensor([2.0, 1.0, 0.5], dtype=F64), torch.tensor([1.2, 0.7, 1.1], dtype=F64)
    g = 3 * torch.softmax(p, 0) * n
    target = (g.mean() * r**1.5).detach()
    (auto,) = torch.autograd.grad((g - target).abs().sum(), p)
    _close(gradnorm_loss_and_grad(p.detach(), n, r, 1.5)[1], auto, 1e-12)


def test_gradnorm_is_ew_in_epoch_zero_then_gradient_based():
    m = _method("gradnorm", t=2)
    ctx = StepContext(epoch=0, step=1)
    assert m.needs(ctx) is Kind.LOSSES
    objective, w = m.combine({"t0": torch.tensor(2.0), "t1": torch.tensor(3.0)}, ctx)
    assert float(objective) == 5.0 and [float(v) for v in w.values()] == [1.0, 1.0]
    m.on_epoch_end(EpochStats(means={"gradnorm_loss": torch.tensor([1.0, 1.0])}))
    assert m.needs(StepContext(epoch=1, step=2)) is Kind.GRAMIAN
    agg, _, _ = _run("gradnorm", [(2.0, 0.0), (0.0, 1.0)], loss_values=[1.0, 1.0], method=m)
    _close(agg.weights, (1.0, 1.0), 1e-12)
    assert float(agg.weights.sum()) == pytest.approx(2.0)
    _close(agg.param_grads["logits"], (1.5, -1.5), 1e-6)


# -------------------------------------------------------------------------------------------------------- DB-MTL
def test_db_mtl_first_step():
    # g = ∇L: (2, 0) with L = 1 and (0, 3) with L = 0.5; rows are ∇log L = ∇L / L
    agg, u, m = _run("db_mtl", [(2.0, 0.0), (0.0, 6.0)])
    _close(m._staged, [(0.2, 0.0), (0.0, 0.6)], 1e-12)
    _close(agg.weights, (3.0, 1.0), 1e-6)
    _close(u, (0.6, 0.6), 1e-6)
    f = m.task_objectives({"t0": torch.tensor(0.5), "t1": torch.tensor(1.0)})
    assert float(f["t0"]) == pytest.approx(math.log(0.5 + 1e-8))


def test_db_mtl_state_commits_only_on_taken_steps():
    m = _method("db_mtl", t=2)
    _run("db_mtl", [(2.0, 0.0), (0.0, 6.0)], method=m)
    m.on_step_end(StepEnd(step_taken=False))
    assert m.ema is None and m.steps == 0
    _run("db_mtl", [(2.0, 0.0), (0.0, 6.0)], method=m)
    m.on_step_end(StepEnd(step_taken=True))
    assert m.steps == 1
    _close(m.ema, [(0.2, 0.0), (0.0, 0.6)], 1e-12)


# ------------------------------------------------------------------------------------------ cross-cutting (§4.2)
def _random_rows(seed: int, t: int = 3, d: int = 6) -> list:
    rng = np.random.default_rng(seed)
    return [tuple(r) for r in rng.normal(size=(t, d))]


def _prepare(name: str, t: int = 3, seed: int = 0):
    m = _method(name, t=t, seed=seed)
    if name == "gradnorm":
        m.on_epoch_end(EpochStats(means={"gradnorm_loss": torch.ones(t)}))
    return m


def _steps(m, name, seeds):
    out = []
    for k, s in enumerate(seeds):
        agg, u, _ = _run(name, _random_rows(s), loss_values=[1.0, 0.8, 1.3], method=m, step=k + 1)
        m.on_step_end(StepEnd(step_taken=True))
        out.append((agg.weights.clone(), u.clone()))
    return out


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_deterministic_and_state_dict_round_trip(name):
    a, b = _prepare(name, seed=7), _prepare(name, seed=7)
    ra, rb = _steps(a, name, [1, 2, 3]), _steps(b, name, [1, 2, 3])
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(ra, rb))
    restored = _method(name, t=3, seed=99)
    restored.load_state_dict(a.state_dict())
    if name == "db_mtl":
        assert restored.steps == 3 and torch.equal(restored.ema, a.ema)
    after_a, after_r = _steps(a, name, [4, 5]), _steps(restored, name, [4, 5])
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(after_a, after_r))


@pytest.mark.parametrize("name", ["mgda", "cagrad", "imtl", "nash_mtl", "aligned_mtl", "upgrad", "db_mtl", "gradnorm"])
def test_permutation_equivariance(name):
    rows = _random_rows(11)
    perm = [2, 0, 1]
    agg, u, _ = _run(name, rows, loss_values=[1.0, 1.0, 1.0], method=_prepare(name))
    agg_p, u_p, _ = _run(name, [rows[i] for i in perm], loss_values=[1.0, 1.0, 1.0], method=_prepare(name))
    _close(agg_p.weights, agg.weights.numpy()[perm], 1e-6)
    _close(u_p, u, 1e-6)


def test_disallowed_space_raises():
    with pytest.raises(ValueError, match=r"PCGrad does not allow space 'rep'; allowed spaces: \['param'\]"):
        build_weighting("pcgrad", {"space": "rep"})
    with pytest.raises(ValueError, match="DBMTL does not allow space 'rep'"):
        build_weighting("DB_MTL", {"space": "rep"})
    with pytest.raises(ValueError, match="unknown gradient space 'grad'"):
        build_weighting("mgda", {"space": "grad"})


def test_kinds_spaces_and_heads_match_the_catalogue():
    expected = {  # spec §3.1: kind, default space, allowed spaces, heads
        "mgda": ("gramian", "param", {"rep", "param"}, "own"),
        "mgda_ub": ("gramian", "rep", {"rep", "param"}, "own"),
        "pcgrad": ("gramian", "param", {"param"}, "own"),
        "cagrad": ("gramian", "param", {"rep", "param"}, "own"),
        "imtl": ("gramian", "rep", {"rep", "param"}, "own"),
        "nash_mtl": ("gramian", "param", {"rep", "param"}, "weighted"),
        "aligned_mtl": ("gramian", "param", {"rep", "param"}, "own"),
        "upgrad": ("gramian", "param", {"rep", "param"}, "own"),
        "gradnorm": ("gramian", "param", {"rep", "param"}, "own"),
        "db_mtl": ("task_grads", "param", {"param"}, "own"),
    }
    for name, (kind, space, spaces, heads) in expected.items():
        m = build_weighting(name)
        assert (m.kind.value, m.space, set(m.spaces), m.heads) == (kind, space, spaces, heads), name


def test_libmtl_names_and_arguments_are_accepted():
    assert build_weighting("Nash_MTL", {"update_weights_every": 3}).update_every == 3
    assert build_weighting("CAGrad", {"calpha": 0.5, "rescale": 1}).c == 0.5
    assert build_weighting("MGDA", {"mgda_gn": "l2"}).normalize == "l2"
    assert build_weighting("Aligned_MTL").space == "param"
    assert build_weighting("DB_MTL", {"DB_beta": 0.5}).beta == 0.5


# ------------------------------------------------------------------------- on-device solvers (simplex_qp.py)
def test_mgda_and_upgrad_weights_stay_on_the_gramian_dtype_and_device():
    rows = _random_rows(3, t=4, d=3)  # T > d: rank-deficient K
    for name in ("mgda", "upgrad"):
        g = torch.tensor(rows, dtype=torch.float32)
        m = _method(name, t=4)
        ctx = StepContext(epoch=1, step=1, loss_values=torch.ones(4), generator=m.generator)
        agg = m.weights(g @ g.T, _losses(4), ctx)
        assert agg.weights.dtype == torch.float32 and agg.weights.device == g.device
        assert torch.isfinite(agg.coefficients).all()
